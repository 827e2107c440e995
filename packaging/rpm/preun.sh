# %preun: on erase ($1 = 0, not an upgrade) stop and disable the service, so
# the classifier is detached before its binary goes away. Only where systemd
# runs; the package never enables or starts the service itself.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now vantage.service >/dev/null 2>&1 || :
fi
