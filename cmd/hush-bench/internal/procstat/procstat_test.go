package procstat

import (
	"net"
	"os"
	"testing"
)

func TestOwnProcess(t *testing.T) {
	pid := os.Getpid()
	rss, err := RSS(pid)
	if err != nil || rss < 1<<20 {
		t.Fatalf("RSS = %d, %v; a Go test binary holds more than 1 MiB", rss, err)
	}
	io, err := ReadIO(pid)
	if err != nil || io.WChar < 0 {
		t.Fatalf("ReadIO = %+v, %v", io, err)
	}
	lim, err := OpenFileLimit(pid)
	if err != nil || lim < 64 {
		t.Fatalf("OpenFileLimit = %d, %v", lim, err)
	}
	raised, err := RaiseOpenFileLimit()
	if err != nil || int64(raised) < lim {
		t.Fatalf("RaiseOpenFileLimit = %d, %v (was %d)", raised, err, lim)
	}
	if la, err := LoadAvg(); err != nil || la < 0 {
		t.Fatalf("LoadAvg = %v, %v", la, err)
	}
	if cpu, err := CPUTime(pid); err != nil || cpu < 0 {
		t.Fatalf("CPUTime = %v, %v", cpu, err)
	}
	if _, err := RSS(1 << 30); err == nil {
		t.Fatal("RSS of a pid that cannot exist")
	}
}

func TestListenerPID(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	pid, err := ListenerPID(port)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("ListenerPID(%d) = %d, %v; want %d", port, pid, err, os.Getpid())
	}
	ln.Close()
	if pid, err := ListenerPID(port); err == nil {
		t.Fatalf("closed listener found in pid %d", pid)
	}
}
