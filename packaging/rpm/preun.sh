# Erasing the package ($1 = 0, not an upgrade) stops and disables the
# daemons. Workloads keep running as their own units until revoked (drain
# the launcher first to move them) or until the host reboots.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop prism-launcher.service prism-admin.service >/dev/null 2>&1 || :
    fi
    systemctl disable --quiet prism-launcher.service prism-admin.service >/dev/null 2>&1 || :
fi
