// Package sdnotify tells systemd about the service's state (sd_notify(3)):
// READY=1 once it serves, STATUS= lines, STOPPING=1. Outside a
// Type=notify unit ($NOTIFY_SOCKET unset) it does nothing.
package sdnotify

import (
	"net"
	"os"
	"strings"
)

// Notify sends state ("READY=1", "STATUS=…", several lines at once) to
// $NOTIFY_SOCKET. It reports whether a socket was there to tell.
func Notify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // an abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return true, err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return true, err
}
