package testconsul

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// HTTPConnections counts the established TCP connections to the agent's
// HTTP port from this host, whoever opened them: what Consul's
// limits.http_max_conns_per_client counts for 127.0.0.1.
func (a *Agent) HTTPConnections() (int, error) {
	return connectionsTo(a.ports.HTTP)
}

// HTTPSConnections counts the established TCP connections to the agent's
// HTTPS port from this host (0 without Options.HTTPS). Consul counts them
// in the same per-client limit as those to its HTTP port.
func (a *Agent) HTTPSConnections() (int, error) {
	if a.ports.HTTPS == 0 {
		return 0, nil
	}
	return connectionsTo(a.ports.HTTPS)
}

// connectionsTo counts the established IPv4 TCP connections whose remote
// end is port (both ends of a loopback connection are listed; only the
// client's has port as its remote end).
//
// It asks the kernel over NETLINK_SOCK_DIAG for the established sockets
// only. Reading /proc/net/tcp instead costs a walk of the whole
// established hash table per 4 KiB of text: with a few thousand sockets
// (TIME_WAIT included) that took half a CPU when polled every 50 ms, and
// slowed what the callers measure.
func connectionsTo(port int) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}

	// struct nlmsghdr, then struct inet_diag_req_v2 (sockid all zero: every socket).
	const hdrLen, reqLen = unix.SizeofNlMsghdr, 56
	req := make([]byte, hdrLen+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	req[hdrLen+0] = unix.AF_INET
	req[hdrLen+1] = unix.IPPROTO_TCP
	ne.PutUint32(req[hdrLen+4:], 1<<unix.BPF_TCP_ESTABLISHED)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}

	n := 0
	buf := make([]byte, 1<<16)
	for {
		m, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return 0, fmt.Errorf("sock_diag: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:m])
		if err != nil {
			return 0, fmt.Errorf("sock_diag: %w", err)
		}
		for _, msg := range msgs {
			switch msg.Header.Type {
			case unix.NLMSG_DONE:
				return n, nil
			case unix.NLMSG_ERROR:
				if len(msg.Data) >= 4 {
					if errno := int32(ne.Uint32(msg.Data)); errno != 0 {
						return 0, fmt.Errorf("sock_diag: %w", os.NewSyscallError("dump", unix.Errno(-errno)))
					}
				}
				return 0, fmt.Errorf("sock_diag: error message")
			}
			// struct inet_diag_msg: family, state, timer, retrans, then
			// the sockid, whose ports are in network byte order.
			d := msg.Data
			if len(d) < 8 || d[1] != unix.BPF_TCP_ESTABLISHED {
				continue
			}
			if int(binary.BigEndian.Uint16(d[6:8])) == port {
				n++
			}
		}
	}
}
