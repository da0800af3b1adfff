package testconsul

import "syscall"

// sysProcAttr makes the kernel kill the agent when the process that started
// it dies, so an agent does not outlive a test binary that panicked, timed out
// or was killed. Strictly, the signal is sent when the OS thread that forked
// the agent exits; the Go runtime keeps its threads for the life of the
// process, except those of goroutines that exit while locked with
// runtime.LockOSThread, so do not start agents from such a goroutine.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
