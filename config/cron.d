# Catalyst — HKEX schedule (seed §6.1). Times are UTC (HKT = UTC+8). Install: sudo cp config/cron.d /etc/cron.d/catalyst
# Edit the user (catalyst) and the path (/opt/catalyst) to match your install. Output goes to logs/cron.log;
# every run also writes agent_logs and logs/agent.log. A run that overlaps the previous one exits 75 at once.
SHELL=/bin/bash
PATH=/usr/local/bin:/usr/bin:/bin

# Reconciliation with the broker before the open (09:00 HKT)
45 0 * * 1-5   catalyst  cd /opt/catalyst && ./run.sh reconcile >> logs/cron.log 2>&1

# The broker's securities and daily bars into the bar store (08:30 HKT): only what is missing
30 0 * * 1-5   catalyst  cd /opt/catalyst && ./run.sh data sync >> logs/cron.log 2>&1

# Pre-market scan (09:00 HKT)
0 1 * * 1-5    catalyst  cd /opt/catalyst && ./run.sh scan >> logs/cron.log 2>&1

# Trading cycles every 30 min during the sessions (09:30-12:00, 13:00-16:00 HKT)
30 1 * * 1-5   catalyst  cd /opt/catalyst && ./run.sh trade >> logs/cron.log 2>&1
0,30 2-3 * * 1-5 catalyst  cd /opt/catalyst && ./run.sh trade >> logs/cron.log 2>&1
0,30 5-7 * * 1-5 catalyst  cd /opt/catalyst && ./run.sh trade >> logs/cron.log 2>&1

# End-of-day review at 15:55 HKT, while the market is still open so intraday exits can fill
55 7 * * 1-5   catalyst  cd /opt/catalyst && ./run.sh close >> logs/cron.log 2>&1

# Off-hours heartbeat (20:00 and 02:00 HKT)
0 12,18 * * 1-5 catalyst  cd /opt/catalyst && ./run.sh heartbeat >> logs/cron.log 2>&1
