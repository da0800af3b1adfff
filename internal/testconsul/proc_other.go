//go:build !linux

package testconsul

import "syscall"

// sysProcAttr returns nil: outside Linux there is no parent-death signal, so
// an agent outlives a test binary that dies without running its cleanups.
func sysProcAttr() *syscall.SysProcAttr {
	return nil
}
