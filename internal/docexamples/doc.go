// Package docexamples holds the test that runs the shell examples of the
// README and docs/ as printed, against the demo of `make run`.
package docexamples
