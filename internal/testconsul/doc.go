// Package testconsul starts and controls real Consul agents for the tests of
// other packages.
//
// Every agent is a separate `consul agent` process running the binary
// returned by [Bin]. It listens only on loopback addresses, on ports picked
// free for it, with a generated JSON configuration file and its own working
// directory (configuration, log file and, outside dev mode, data directory).
// Nothing is shared between agents unless a test joins them.
//
// The simplest use is a dev agent (an in-memory single-server cluster):
//
//	a := testconsul.Start(t, testconsul.Options{Dev: true})
//	c := a.Client()
//	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "web", Port: 80})
//
// [Start] returns once the agent is ready to serve requests (see
// [Agent.WaitReady]) and registers a cleanup that kills the agent at the end
// of the test. When the test fails, the last lines of the agent's log are
// printed with t.Logf. [StartE] is the same without a testing.TB, for use
// from TestMain; its caller stops the agent with [Agent.Close].
//
// [CountingProxy] is an HTTP reverse proxy to put between the code under test
// and an agent: it counts requests (to assert how many calls reach Consul) and
// can inject faults. [WaitFor] polls a condition instead of sleeping.
package testconsul
