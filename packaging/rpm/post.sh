# Installing makes the units known to systemd but starts nothing: configure
# /etc/prism/launcher.toml first, then `systemctl enable --now
# prism-launcher`. An upgrade ($1 > 1) restarts the daemons that were
# running; that never touches workloads, which are units of their own.
# The old name (RPM cannot carry these symlinks as files).
ln -sfn prism-launcher /usr/bin/pattern-launcher
ln -sfn prism-launcher.8.gz /usr/share/man/man8/pattern-launcher.8.gz
# The operator group of the local sockets (sysusers.d/prism-launcher.conf).
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers prism-launcher.conf >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -gt 1 ]; then
        systemctl try-restart prism-launcher.service prism-admin.service >/dev/null 2>&1 || :
    fi
fi
