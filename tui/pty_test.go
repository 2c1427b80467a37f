package tui

import (
	"context"
	"fmt"
	"image/color"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/vt"
	"github.com/creack/pty"

	"github.com/hushchat/hush/client"
)

// The end-to-end test runs two real TUIs (tui.Run on a real client, in
// this test binary re-executed as a child) in real pseudo-terminals, and
// reads their screens through a VT emulator, as a person would.

const childHomeEnv = "HUSH_TUI_TEST_CHILD_HOME"

func TestMain(m *testing.M) {
	if home := os.Getenv(childHomeEnv); home != "" {
		os.Exit(runChild(home))
	}
	os.Exit(m.Run())
}

// runChild is the child process: the TUI on the profile in home.
func runChild(home string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c, err := client.Open(ctx, clientConfig(home))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	if err := Run(ctx, c, Options{Home: home}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// term is one TUI in a pseudo-terminal.
type term struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	ptmx *os.File
	done chan struct{}
	mu   sync.Mutex // serializes stop

	// emuMu guards emu's screen: the output goroutine writes it, the test
	// reads it. (emu.Read, the terminal's answers, needs no lock.)
	emuMu sync.Mutex
	emu   *vt.Emulator
}

func startTerm(t *testing.T, name, home string, w, h int) *term {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childHomeEnv+"="+home, "TERM=xterm-256color", "COLORTERM=truecolor")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: uint16(h), Cols: uint16(w)})
	if err != nil {
		t.Fatalf("start %s in a pty: %v", name, err)
	}
	tm := &term{t: t, name: name, cmd: cmd, ptmx: ptmx, emu: vt.NewEmulator(w, h), done: make(chan struct{})}
	go func() {
		// Screen output → emulator.
		defer close(tm.done)
		buf := make([]byte, 32<<10)
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				tm.emuMu.Lock()
				tm.emu.Write(buf[:n])
				tm.emuMu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	// The emulator's answers to terminal queries → the program.
	go io.Copy(ptmx, tm.emu)
	t.Cleanup(tm.stop)
	return tm
}

func (tm *term) stop() {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if tm.cmd.ProcessState != nil {
		return
	}
	tm.ptmx.Write([]byte{3}) // ctrl+c: quit
	exited := make(chan error, 1)
	go func() { exited <- tm.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			tm.t.Errorf("%s exited: %v", tm.name, err)
		}
	case <-time.After(20 * time.Second):
		tm.cmd.Process.Kill()
		<-exited
		tm.t.Errorf("%s did not quit on ctrl+c", tm.name)
	}
	tm.ptmx.Close()
	// The emulator is left open: its Close races with a blocked Read in
	// x/vt v0.1.0, and the answer-copying goroutine ends with the test
	// binary.
}

func (tm *term) lines() []string {
	tm.emuMu.Lock()
	defer tm.emuMu.Unlock()
	return strings.Split(ansi.Strip(tm.emu.Render()), "\n")
}

func (tm *term) screen() string { return strings.Join(tm.lines(), "\n") }

// waitFor polls the screen until cond holds (generous deadline; the test
// asserts what shows, never how fast).
func (tm *term) waitFor(what string, cond func() bool) {
	tm.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tm.t.Fatalf("%s: timed out waiting for %s; screen:\n%s", tm.name, what, tm.screen())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (tm *term) waitText(s string) {
	tm.t.Helper()
	tm.waitFor(fmt.Sprintf("%q", s), func() bool { return strings.Contains(tm.screen(), s) })
}

func (tm *term) typ(s string) {
	tm.t.Helper()
	if _, err := tm.ptmx.Write([]byte(s)); err != nil {
		tm.t.Fatalf("%s: type: %v", tm.name, err)
	}
	time.Sleep(20 * time.Millisecond) // keys arrive as separate reads, like typing
}

// tickColor finds the ✓✓ on the line holding text and returns its
// colour.
func (tm *term) tickColor(text string) (color.Color, bool) {
	for y, l := range tm.lines() {
		if !strings.Contains(l, text) {
			continue
		}
		r := []rune(l)
		for x := 0; x+1 < len(r); x++ {
			if r[x] == '✓' && r[x+1] == '✓' {
				tm.emuMu.Lock()
				var fg color.Color
				c := tm.emu.CellAt(x, y)
				if c != nil {
					fg = c.Style.Fg
				}
				tm.emuMu.Unlock()
				if c != nil {
					return fg, true
				}
			}
		}
	}
	return nil, false
}

func sameRGB(c color.Color, hex string) bool {
	if c == nil {
		return false
	}
	r, g, b, _ := c.RGBA()
	return fmt.Sprintf("#%02x%02x%02x", r>>8, g>>8, b>>8) == hex
}

// TestTwoTerminals: alice types, bob's screen shows it; alice sees ✓✓,
// then blue ✓✓ once bob opens the conversation.
func TestTwoTerminals(t *testing.T) {
	ts := startServer(t)
	homes := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		home := filepath.Join(t.TempDir(), name)
		c, err := client.Open(context.Background(), clientConfig(home))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = c.Register(ctx, ts.url, name)
		cancel()
		c.Close() // the TUI process opens the profile
		if err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		homes[name] = home
	}
	alice := startTerm(t, "alice", homes["alice"], 80, 24)
	bob := startTerm(t, "bob", homes["bob"], 80, 24)
	alice.waitText("connected · alice")
	bob.waitText("connected · bob")

	alice.typ("n")
	alice.waitText("New chat")
	alice.typ("bob")
	alice.typ("\r")
	alice.waitText("No messages yet")
	alice.typ("hello via pty")
	alice.typ("\r")

	bob.waitText("hello via pty")
	alice.waitFor("✓✓ (delivered)", func() bool { _, ok := alice.tickColor("hello via pty"); return ok })
	if c, _ := alice.tickColor("hello via pty"); sameRGB(c, defaultColors["read"]) {
		t.Fatalf("blue ✓✓ before bob opened the conversation:\n%s", alice.screen())
	}

	bob.typ("\r") // open the selected (only) conversation
	bob.waitText("alice: hello via pty")
	alice.waitFor("blue ✓✓ (read)", func() bool {
		c, ok := alice.tickColor("hello via pty")
		return ok && sameRGB(c, defaultColors["read"])
	})

	// And back: bob answers from his input.
	bob.typ("hi alice")
	bob.typ("\r")
	alice.waitText("bob: hi alice")
}
