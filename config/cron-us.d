# Catalyst — NYSE / NASDAQ schedule (Alpaca). Times are New York time (CRON_TZ), so daylight saving needs no edit.
# Install: sudo cp config/cron-us.d /etc/cron.d/catalyst (your cron must honour CRON_TZ: cronie and Debian's cron do).
# Edit the user (catalyst) and the path (/opt/catalyst) to match your install. Output goes to logs/cron.log.
SHELL=/bin/bash
PATH=/usr/local/bin:/usr/bin:/bin
CRON_TZ=America/New_York

# Reconciliation with the broker before the open
45 8 * * 1-5   catalyst  cd /opt/catalyst && ./run.sh reconcile >> logs/cron.log 2>&1

# The broker's securities and daily bars into the bar store (08:30 New York): only what is missing
30 8 * * 1-5   catalyst  cd /opt/catalyst && ./run.sh data sync >> logs/cron.log 2>&1

# Pre-market scan (09:00 New York)
0 9 * * 1-5    catalyst  cd /opt/catalyst && ./run.sh scan >> logs/cron.log 2>&1

# Trading cycles every 30 min during the session (09:30-16:00 New York)
30 9 * * 1-5     catalyst  cd /opt/catalyst && ./run.sh trade >> logs/cron.log 2>&1
0,30 10-15 * * 1-5 catalyst  cd /opt/catalyst && ./run.sh trade >> logs/cron.log 2>&1

# End-of-day review at 15:55, while the market is still open so intraday exits can fill
55 15 * * 1-5  catalyst  cd /opt/catalyst && ./run.sh close >> logs/cron.log 2>&1

# Off-hours heartbeat (20:00 and 06:00 New York)
0 6,20 * * 1-5 catalyst  cd /opt/catalyst && ./run.sh heartbeat >> logs/cron.log 2>&1
