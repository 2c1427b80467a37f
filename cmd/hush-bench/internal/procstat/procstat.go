// Package procstat reads what hush-bench reports about processes on this
// machine from Linux's /proc: a server's resident memory (VmRSS), the bytes
// it wrote to storage (write_bytes of /proc/PID/io, which counts pages the
// process dirtied, so the SQLite WAL and checkpoints included, sockets
// excluded), its open-file limit, the load average, and which process
// listens on a TCP port (so `--server-pid` can usually be left out). It
// also raises the generator's own RLIMIT_NOFILE.
//
// Everything here is Linux-only by nature; on another system the
// functions return errors and hush-bench reports the figures as missing.
package procstat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// RSS returns the resident set size of pid, in bytes (VmRSS).
func RSS(pid int) (int64, error) {
	return statusField(pid, "VmRSS:")
}

// statusField reads a "kB" field of /proc/PID/status.
func statusField(pid int, name string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte(name)); ok {
			f := strings.Fields(string(rest))
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("pid %d: unexpected %s line %q", pid, name, line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: %s: %w", pid, name, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no %s in /proc/%d/status", pid, name, pid)
}

// IO is a process's I/O counters.
type IO struct {
	// WriteBytes: bytes the process caused to be sent to storage.
	WriteBytes int64
	// WChar: bytes passed to write(2) and friends, sockets included.
	WChar int64
}

// ReadIO reads /proc/PID/io.
func ReadIO(pid int) (IO, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return IO{}, fmt.Errorf("read io counters of pid %d: %w", pid, err)
	}
	var io IO
	found := 0
	for line := range bytes.Lines(b) {
		k, v, ok := strings.Cut(strings.TrimSpace(string(line)), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "write_bytes":
			io.WriteBytes = n
			found++
		case "wchar":
			io.WChar = n
			found++
		}
	}
	if found != 2 {
		return IO{}, fmt.Errorf("pid %d: /proc/%d/io lacks write_bytes or wchar", pid, pid)
	}
	return io, nil
}

// OpenFileLimit returns pid's soft RLIMIT_NOFILE ("Max open files").
func OpenFileLimit(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, fmt.Errorf("read limits of pid %d: %w", pid, err)
	}
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte("Max open files")); ok {
			f := strings.Fields(string(rest))
			if len(f) < 1 {
				break
			}
			if f[0] == "unlimited" {
				return 1 << 62, nil
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("pid %d: no Max open files in /proc/%d/limits", pid, pid)
}

// RaiseOpenFileLimit raises this process's soft RLIMIT_NOFILE to its hard
// limit and returns the new soft limit. The hard limit can only be raised
// with CAP_SYS_RESOURCE (ulimit -Hn as root), which is left to the operator.
func RaiseOpenFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", l.Max, err)
		}
	}
	return l.Cur, nil
}

// LoadAvg returns the 1-minute load average.
func LoadAvg() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("empty /proc/loadavg")
	}
	return strconv.ParseFloat(f[0], 64)
}

// CPUTime returns the user+system CPU time pid has used, in clock ticks
// converted to seconds (USER_HZ is 100 on Linux).
func CPUTime(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	// The command name may contain spaces; fields start after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("pid %d: stat: %w", pid, err)
	}
	return float64(utime+stime) / 100, nil
}

// ListenerPID finds the process that listens on TCP port (IPv4 or IPv6,
// any local address): it looks the listening socket's inode up in
// /proc/net/tcp{,6} and then searches /proc/*/fd for it. It needs the
// permission to read other processes' fd directories (same user or root).
func ListenerPID(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, p, ok := strings.Cut(fs[1], ":")
			if !ok {
				continue
			}
			if n, err := strconv.ParseInt(p, 16, 32); err == nil && int(n) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no process listens on TCP port %d", port)
	}
	procs, err := filepath.Glob("/proc/[0-9]*/fd")
	if err != nil {
		return 0, err
	}
	for _, dir := range procs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && inodes[target] {
				return strconv.Atoi(filepath.Base(filepath.Dir(dir)))
			}
		}
	}
	return 0, fmt.Errorf("the listener on TCP port %d belongs to a process whose fds cannot be read (pass --server-pid)", port)
}
