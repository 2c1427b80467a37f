package tui

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/app/apptest"
)

// The tests run a real hush-server (key server + relay on SQLite,
// loopback) in process and real clients with profiles in temp dirs; the
// model is driven through Update exactly as Bubble Tea drives it, with
// its commands run on goroutines and their messages fed back in order.

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func testLogger() *slog.Logger {
	if os.Getenv("HUSH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testServer struct {
	app *app.App
	url string
}

func startServer(t testing.TB) *testServer {
	t.Helper()
	s := apptest.Start(t, func(c *app.AllInOneConfig) { c.Logger = testLogger() })
	return &testServer{app: s.App(), url: s.URL()}
}

func clientConfig(home string) client.Config {
	return client.Config{
		Home:            home,
		Logger:          testLogger(),
		BackoffMin:      20 * time.Millisecond,
		BackoffMax:      400 * time.Millisecond,
		HoldTimeout:     500 * time.Millisecond,
		HandlerRetryMin: 10 * time.Millisecond,
		HandlerRetryMax: 50 * time.Millisecond,
		SendTimeout:     10 * time.Second,
		EventBuffer:     4096,
	}
}

func openClient(t testing.TB, home string) *client.Client {
	t.Helper()
	c, err := client.Open(context.Background(), clientConfig(home))
	if err != nil {
		t.Fatalf("open client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	homes.Store(c, home)
	return c
}

var homes sync.Map // *client.Client → profile dir

func clientHome(t testing.TB, c *client.Client) string {
	h, ok := homes.Load(c)
	if !ok {
		t.Fatal("unknown client")
	}
	return h.(string)
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// newClient registers name on ts in a fresh profile.
func newClient(t testing.TB, ts *testServer, name string) *client.Client {
	t.Helper()
	c := openClient(t, filepath.Join(t.TempDir(), name))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Register(ctx, ts.url, name); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	if err := c.WaitSynced(ctx); err != nil {
		t.Fatalf("%s: wait synced: %v", name, err)
	}
	return c
}

// driver runs a Model the way a tea.Program does: Update on one
// goroutine (the test's), commands on others, their messages queued.
type driver struct {
	t     testing.TB
	m     *Model
	msgs  chan tea.Msg
	done  chan struct{}
	mu    sync.Mutex
	bells int
	quit  bool
}

func newDriver(t testing.TB, c *client.Client, cfg Config, w, h int) *driver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := newModel(ctx, c, cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := &driver{t: t, m: m, msgs: make(chan tea.Msg, 4096), done: make(chan struct{})}
	t.Cleanup(func() {
		cancel()
		close(d.done)
	})
	d.send(tea.WindowSizeMsg{Width: w, Height: h})
	d.run(m.Init())
	return d
}

func (d *driver) run(cmd tea.Cmd) {
	if cmd == nil {
		return
	}
	go func() {
		d.deliver(cmd())
	}()
}

var cmdType = reflect.TypeOf((tea.Cmd)(nil))

func (d *driver) deliver(msg tea.Msg) {
	if msg == nil {
		return
	}
	// tea.BatchMsg and tea.Sequence's message are both []tea.Cmd.
	if v := reflect.ValueOf(msg); v.Kind() == reflect.Slice && v.Type().Elem() == cmdType {
		_, isBatch := msg.(tea.BatchMsg)
		for i := 0; i < v.Len(); i++ {
			c := v.Index(i).Interface().(tea.Cmd)
			if c == nil {
				continue
			}
			if isBatch {
				d.run(c)
			} else {
				d.deliver(c())
			}
		}
		return
	}
	switch msg := msg.(type) {
	case tea.QuitMsg:
		d.mu.Lock()
		d.quit = true
		d.mu.Unlock()
		return
	case tea.RawMsg:
		if msg.Msg == "\a" {
			d.mu.Lock()
			d.bells++
			d.mu.Unlock()
		}
		return
	}
	select {
	case d.msgs <- msg:
	case <-d.done:
	}
}

// send runs Update with msg (and starts the commands it returns).
func (d *driver) send(msg tea.Msg) {
	_, cmd := d.m.Update(msg)
	d.run(cmd)
}

// keys types each space-separated key name ("enter", "alt+enter", "n").
func (d *driver) keys(names ...string) {
	for _, n := range names {
		d.send(keyMsg(n))
		d.pump()
	}
}

// typeText types text character by character.
func (d *driver) typeText(s string) {
	for _, r := range s {
		if r == ' ' {
			d.send(tea.KeyPressMsg{Code: tea.KeySpace, Text: " "})
		} else {
			d.send(tea.KeyPressMsg{Code: r, Text: string(r)})
		}
	}
	d.pump()
}

// pump applies the messages that are ready.
func (d *driver) pump() {
	for {
		select {
		case msg := <-d.msgs:
			d.send(msg)
		default:
			return
		}
	}
}

// until feeds messages until cond holds (generous deadline: the tests
// assert what happens, never how fast).
func (d *driver) until(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		d.pump()
		if cond() {
			return
		}
		select {
		case msg := <-d.msgs:
			d.send(msg)
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			d.t.Fatalf("timed out waiting for %s; screen:\n%s", what, d.screen())
		}
	}
}

// settle feeds messages until none arrive for a while.
func (d *driver) settle() {
	for {
		select {
		case msg := <-d.msgs:
			d.send(msg)
		case <-time.After(300 * time.Millisecond):
			return
		}
	}
}

func (d *driver) screen() string { return ansi.Strip(d.m.render()) }

func (d *driver) screenHas(s string) bool { return strings.Contains(d.screen(), s) }

func (d *driver) bellCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bells
}

var specialKeys = map[string]rune{
	"enter": tea.KeyEnter, "esc": tea.KeyEscape, "tab": tea.KeyTab, "up": tea.KeyUp, "down": tea.KeyDown,
	"left": tea.KeyLeft, "right": tea.KeyRight, "pgup": tea.KeyPgUp, "pgdown": tea.KeyPgDown,
	"home": tea.KeyHome, "end": tea.KeyEnd, "backspace": tea.KeyBackspace, "space": tea.KeySpace,
}

func keyMsg(name string) tea.KeyPressMsg {
	var mod tea.KeyMod
	base := name
	for {
		switch {
		case strings.HasPrefix(base, "ctrl+") && len(base) > 5:
			mod |= tea.ModCtrl
			base = base[5:]
			continue
		case strings.HasPrefix(base, "alt+") && len(base) > 4:
			mod |= tea.ModAlt
			base = base[4:]
			continue
		case strings.HasPrefix(base, "shift+") && len(base) > 6:
			mod |= tea.ModShift
			base = base[6:]
			continue
		}
		break
	}
	if r, ok := specialKeys[base]; ok {
		return tea.KeyPressMsg{Code: r, Mod: mod}
	}
	r := []rune(base)[0]
	if mod == 0 {
		return tea.KeyPressMsg{Code: r, Text: base}
	}
	return tea.KeyPressMsg{Code: r, Mod: mod}
}

// times masks clock times and day labels so golden files do not depend
// on when the test runs.
var times = regexp.MustCompile(`\b\d{2}:\d{2}\b`)

func normalize(s string) string {
	s = times.ReplaceAllString(s, "HH:MM")
	return s
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	got = normalize(got)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./tui -run %s -update to create it)", err, t.Name())
	}
	if string(want) != got {
		t.Errorf("%s differs from %s:\n--- got ---\n%s\n--- want ---\n%s", t.Name(), path, got, want)
	}
}
