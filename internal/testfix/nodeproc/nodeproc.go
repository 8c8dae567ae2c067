// Package nodeproc runs one server process of a test cluster (a nats-server,
// a Kafka broker): in its own process group, so that a test's signals do not
// reach it and it dies with the test process; its output appended to a log
// file; killed with SIGKILL and restarted on the same storage. The cluster
// fixtures (natscluster, kafkacluster) differ in how a node is configured
// and how they know it serves, not in this.
package nodeproc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// ErrNotStarted: Kill of a process never started.
var ErrNotStarted = errors.New("was never started")

// Proc is one node's process; its zero value is a node not yet started.
type Proc struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when the running process has exited
	logOff int64         // where the current run starts in the appended log
}

// Start starts cmd with its output appended to logFile (not waiting for it
// to serve).
func (p *Proc) Start(cmd *exec.Cmd, logFile string) error {
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	off, _ := logf.Seek(0, io.SeekEnd)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done, p.logOff = cmd, done, off
	p.mu.Unlock()
	return nil
}

// Running reports whether the process is up.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// LogOffset is where the current run's output starts in the log file.
func (p *Proc) LogOffset() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logOff
}

// Kill sends SIGKILL to the process group and waits up to 10 s for the
// process to exit.
func (p *Proc) Kill() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return ErrNotStarted
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("(pid %d) survives SIGKILL", cmd.Process.Pid)
	}
}
