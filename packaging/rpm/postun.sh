# RPM has no purge: erasing keeps state (/var/lib/prism-launcher,
# /var/lib/prism-admin) and modified configuration (saved as .rpmsave);
# remove them by hand once they are not needed.
if [ "$1" -eq 0 ]; then
    rm -f /usr/bin/pattern-launcher /usr/share/man/man8/pattern-launcher.8.gz
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
