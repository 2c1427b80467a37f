package tui

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/hushchat/hush/client"
)

// offlineDriver is a model on an unregistered profile (no server), for
// views that need no network.
func offlineDriver(t *testing.T, w, h int) *driver {
	c := openClient(t, filepath.Join(t.TempDir(), "p"))
	return newDriver(t, c, Config{}, w, h)
}

// TestMessageKinds: undecryptable placeholders, attachments, failed
// sends, group lines and day separators render as such.
func TestMessageKinds(t *testing.T) {
	d := offlineDriver(t, 80, 24)
	m := d.m
	m.reg, m.me, m.registered = nil, "alice", true
	now := time.Now()
	yesterday := now.AddDate(0, 0, -1)
	conv := client.Direct("bob")
	id := func(b byte) client.MessageID { return client.MessageID{b} }
	m.chat = chatState{conv: conv, name: "bob", loaded: true, msgs: []client.Message{
		{Seq: 1, ID: id(1), Conv: conv, Sender: "bob", SentAt: yesterday, Kind: client.KindText, Text: "from yesterday"},
		{Seq: 2, ID: id(2), Conv: conv, Sender: "bob", SentAt: now, Kind: client.KindUndecryptable, Error: "could not be decrypted (no session); the sender was asked to send it again"},
		{Seq: 3, ID: id(3), Conv: conv, Sender: "bob", SentAt: now, Kind: client.KindAttachment,
			Attachment: &client.Attachment{FileName: "report.pdf", Size: 3 << 20, Caption: "the report"}},
		{Seq: 4, ID: id(4), Conv: conv, Sender: "alice", Outgoing: true, SentAt: now, Kind: client.KindText, Text: "lost", Status: client.StatusFailed, Error: "no such account"},
		{Seq: 5, ID: id(5), Conv: conv, Sender: "alice", Outgoing: true, SentAt: now, Kind: client.KindText, Text: "queued", Status: client.StatusPending},
		{Seq: 6, ID: id(6), Conv: conv, Sender: "alice", Outgoing: true, SentAt: now, Kind: client.KindText, Text: "stored", Status: client.StatusSent},
	}}
	scr := d.screen()
	for _, want := range []string{
		"Yesterday", "Today", "bob: from yesterday",
		"bob: ⚠ this message could not be decrypted (no", "session); the sender was asked to send it", "again",
		"[report.pdf] the report (3.0 MB)",
		"alice: lost", "✗", "not sent: no such account",
		"alice: queued", "◷", "alice: stored",
	} {
		if !strings.Contains(scr, want) {
			t.Errorf("screen lacks %q:\n%s", want, scr)
		}
	}
	if !strings.Contains(lineWith(scr, "alice: stored"), "✓") || strings.Contains(lineWith(scr, "alice: stored"), "✓✓") {
		t.Errorf("sent shows one tick: %q", lineWith(scr, "alice: stored"))
	}
}

func lineWith(scr, s string) string {
	for _, l := range strings.Split(scr, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// TestConnectionStates: the status line follows the connection events,
// with the reconnect countdown.
func TestConnectionStates(t *testing.T) {
	d := offlineDriver(t, 80, 24)
	now := time.Date(2026, 11, 26, 14, 2, 0, 0, time.Local)
	d.m.now = func() time.Time { return now }
	status := func() string { return ansi.Strip(d.m.statusLine()) }
	if !strings.Contains(status(), "offline · not registered") {
		t.Fatalf("status = %q", status())
	}
	d.m.handleEvent(&client.ConnectionStateEvent{State: client.Reconnecting, RetryIn: 7 * time.Second, Err: "connection refused"})
	if s := status(); !strings.Contains(s, "reconnecting in 7 s") || !strings.Contains(s, "connection refused") {
		t.Fatalf("status = %q", s)
	}
	now = now.Add(3 * time.Second)
	if s := status(); !strings.Contains(s, "reconnecting in 4 s") {
		t.Fatalf("the countdown does not run: %q", s)
	}
	d.m.handleEvent(&client.ConnectionStateEvent{State: client.Connecting})
	if s := status(); !strings.Contains(s, "connecting…") {
		t.Fatalf("status = %q", s)
	}
	d.m.handleEvent(&client.ConnectionStateEvent{State: client.Connected})
	if s := status(); !strings.Contains(s, "● connected") {
		t.Fatalf("status = %q", s)
	}
}

// TestPresenceHeader: online, last seen today / yesterday / hidden.
func TestPresenceHeader(t *testing.T) {
	now := time.Date(2026, 11, 26, 18, 0, 0, 0, time.Local)
	cases := []struct {
		p    client.PresenceEvent
		want string
	}{
		{client.PresenceEvent{Online: true}, "online"},
		{client.PresenceEvent{LastSeen: time.Date(2026, 11, 26, 14, 2, 0, 0, time.Local)}, "last seen today at 14:02"},
		{client.PresenceEvent{LastSeen: time.Date(2026, 11, 25, 9, 30, 0, 0, time.Local)}, "last seen yesterday at 09:30"},
		{client.PresenceEvent{LastSeen: time.Date(2026, 3, 1, 9, 30, 0, 0, time.Local)}, "last seen 1 Mar at 09:30"},
		{client.PresenceEvent{Hidden: true, LastSeen: now}, ""},
	}
	for _, c := range cases {
		if got := lastSeen(c.p, now); got != c.want {
			t.Errorf("lastSeen(%+v) = %q, want %q", c.p, got, c.want)
		}
	}
	d := offlineDriver(t, 80, 24)
	d.m.now = func() time.Time { return now }
	d.m.chat = chatState{conv: client.Direct("bob"), name: "bob", loaded: true}
	d.m.handleEvent(&client.PresenceEvent{Account: "bob", LastSeen: time.Date(2026, 11, 26, 14, 2, 0, 0, time.Local)})
	if h := ansi.Strip(d.m.header(80)); !strings.Contains(h, "bob · last seen today at 14:02") {
		t.Fatalf("header = %q", h)
	}
	d.m.handleEvent(&client.TypingEvent{Conv: client.Direct("bob"), From: "bob", Started: true})
	if h := ansi.Strip(d.m.header(80)); !strings.Contains(h, "bob · typing…") {
		t.Fatalf("header = %q", h)
	}
	now = now.Add(typingShown + time.Second) // no "stopped" arrived: it expires
	d.send(tickMsg(now))
	if h := ansi.Strip(d.m.header(80)); strings.Contains(h, "typing") {
		t.Fatalf("typing did not expire: %q", h)
	}
}

// TestScrollPagingMouse: a long conversation loads a page at a time as
// one scrolls up; the wheel scrolls; clicks open conversations and
// select messages; pgup/pgdown work from the input.
func TestScrollPagingMouse(t *testing.T) {
	ts := startServer(t)
	ca, cb := newClient(t, ts, "alice"), newClient(t, ts, "bob")
	ctx := context.Background()
	for i := range 2*pageSize + 30 {
		if _, err := cb.Send(ctx, "alice", "line "+itoa3(i)); err != nil {
			t.Fatal(err)
		}
	}
	// No account is named carol: the send is queued and fails later.
	if _, err := ca.Send(ctx, "carol", "to carol"); err != nil {
		t.Fatal(err)
	}
	a := newDriver(t, ca, Config{}, 80, 24)
	a.until("both conversations listed", func() bool { return len(a.m.convs) == 2 })
	a.until("all of bob's messages stored", func() bool {
		c, ok := a.conv(client.Direct("bob"))
		return ok && c.Last != nil && c.Last.Text == "line "+itoa3(2*pageSize+29)
	})
	// Click the row of bob's conversation.
	row := -1
	for i, c := range a.m.listItems() {
		if c.ID == client.Direct("bob") {
			row = i
		}
	}
	a.send(tea.MouseClickMsg{X: 3, Y: 2*row + 1, Button: tea.MouseLeft})
	if a.m.chat.conv != client.Direct("bob") || a.m.focus != paneChat {
		t.Fatalf("click: conv %q focus %d", a.m.chat.conv, a.m.focus)
	}
	a.until("first page", func() bool { return a.m.chat.loaded })
	if n := len(a.m.chat.msgs); n != pageSize {
		t.Fatalf("loaded %d messages, want one page of %d", n, pageSize)
	}
	a.until("marked read", func() bool { c, _ := a.conv(client.Direct("bob")); return c.Unread == 0 })
	// Page up until everything is loaded.
	for i := 0; a.m.chat.hasOlder || a.m.chat.loadingOlder; i++ {
		if i > 500 {
			t.Fatalf("paging never reached the start: %d loaded", len(a.m.chat.msgs))
		}
		a.keys("pgup")
		a.until("page loaded", func() bool { return !a.m.chat.loadingOlder })
	}
	if n := len(a.m.chat.msgs); n != 2*pageSize+30 {
		t.Fatalf("loaded %d messages after paging up", n)
	}
	a.keys("G")
	if a.m.chat.scroll != 0 || a.m.selectedMessage().Text != "line "+itoa3(2*pageSize+29) {
		t.Fatalf("G: scroll %d sel %v", a.m.chat.scroll, a.m.selectedMessage())
	}
	// The wheel over the messages scrolls them.
	a.send(tea.MouseWheelMsg{X: 50, Y: 10, Button: tea.MouseWheelUp})
	if a.m.chat.scroll != 3 {
		t.Fatalf("wheel up: scroll %d", a.m.chat.scroll)
	}
	a.send(tea.MouseWheelMsg{X: 50, Y: 10, Button: tea.MouseWheelDown})
	if a.m.chat.scroll != 0 {
		t.Fatalf("wheel down: scroll %d", a.m.chat.scroll)
	}
	// A click on a message selects it.
	top, rows := a.m.messageArea()
	_, owners := a.m.chatLines(a.m.chatWidth(), rows)
	a.send(tea.MouseClickMsg{X: 50, Y: top + rows - 1, Button: tea.MouseLeft})
	if want := msgKey(&a.m.chat.msgs[owners[rows-1]]); a.m.chat.selKey != want {
		t.Fatalf("click selected %q, want %q", a.m.chat.selKey, want)
	}
	// pgup from the input scrolls the messages.
	a.keys("i")
	a.keys("pgup")
	if a.m.focus != paneInput || a.m.chat.scroll == 0 {
		t.Fatalf("pgup in the input: focus %d scroll %d", a.m.focus, a.m.chat.scroll)
	}
	a.keys("pgdown")
	if a.m.chat.scroll != 0 {
		t.Fatalf("pgdown: scroll %d", a.m.chat.scroll)
	}
	// The failed send to an unknown account shows ✗ with the reason.
	a.keys("esc", "esc")
	a.openFromList("carol")
	a.until("send to carol failed", func() bool {
		m := a.findMsg("to carol")
		return m != nil && m.Status == client.StatusFailed
	})
	if !a.screenHas("✗") || !a.screenHas("not sent:") {
		t.Fatalf("no failure shown:\n%s", a.screen())
	}
}

func itoa3(i int) string { return fmt.Sprintf("%03d", i) }

// TestCommandsAndUnread: slash commands, "u" to the next unread
// conversation, rename, typing stops after idling.
func TestCommandsAndUnread(t *testing.T) {
	ts := startServer(t)
	ca, cb, _ := newClient(t, ts, "alice"), newClient(t, ts, "bob"), newClient(t, ts, "carol")
	a := newDriver(t, ca, Config{}, 80, 24)
	b := newDriver(t, cb, Config{}, 80, 24)

	a.keys("i") // nothing open: stays on the list
	if a.m.focus != paneList {
		t.Fatalf("focus %d", a.m.focus)
	}
	a.newChat("bob")
	a.typeText("/bogus")
	a.keys("enter")
	if !strings.Contains(a.m.flash, "unknown command /bogus") || a.m.input.Value() != "/bogus" {
		t.Fatalf("flash %q input %q", a.m.flash, a.m.input.Value())
	}
	a.m.input.Reset()
	a.typeText("//slash")
	a.keys("enter")
	a.until("literal slash sent", func() bool { return a.findMsg("/slash") != nil })

	a.typeText("/group club bob carol")
	a.keys("enter")
	a.until("group club open", func() bool { return a.m.chat.group != nil && a.m.chat.group.Name == "club" })
	a.setFocusInput()
	a.typeText("/rename chess club")
	a.keys("enter")
	a.until("renamed", func() bool { return a.m.chat.group != nil && a.m.chat.group.Name == "chess club" })
	a.typeText("/mute")
	a.keys("enter")
	a.until("muted", func() bool { c, _ := a.conv(a.m.chat.conv); return c.Muted })
	a.typeText("hello club")
	a.keys("enter")
	a.until("sent", func() bool { return a.findMsg("hello club") != nil })

	// Bob: two unread conversations; u walks them.
	b.until("two unread", func() bool {
		n := 0
		for _, c := range b.m.convs {
			if c.Unread > 0 {
				n++
			}
		}
		return n == 2
	})
	b.keys("u")
	first := b.m.chat.conv
	b.until("opened", func() bool { return b.m.chat.loaded })
	b.keys("esc", "u")
	if b.m.chat.conv == first || b.m.chat.conv == "" {
		t.Fatalf("u did not move on: %q", b.m.chat.conv)
	}
	b.until("both read", func() bool {
		for _, c := range b.m.convs {
			if c.Unread > 0 {
				return false
			}
		}
		return true
	})

	// Typing stops after idling.
	now := time.Now()
	a.m.now = func() time.Time { return now }
	a.openFromList("bob")
	a.typeText("thinking")
	if a.m.typingSentAt.IsZero() {
		t.Fatal("typing was not sent")
	}
	b.openFromList("alice")
	b.until("bob sees typing", func() bool { return strings.Contains(ansi.Strip(b.m.header(80)), "typing…") })
	now = now.Add(typingIdle + time.Second)
	a.send(tickMsg(now))
	if !a.m.typingSentAt.IsZero() {
		t.Fatal("typing did not stop after idling")
	}
	b.until("typing cleared", func() bool { return !strings.Contains(ansi.Strip(b.m.header(80)), "typing…") })
}

// TestConfigFile: parsing, errors, lookup order.
func TestConfigFile(t *testing.T) {
	good := `
server_url = "http://example.org"
bell = false
notify_command = ["notify-send", "{from}", "{text}"]
[keys]
quit = ["ctrl+q"]
mark_verified = []
[colors]
accent = "#ff8700"
read = "39"
`
	cfg, err := ParseConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerURL != "http://example.org" || *cfg.Bell || cfg.NotifyCommand[0] != "notify-send" {
		t.Fatalf("cfg = %+v", cfg)
	}
	for _, bad := range []struct{ in, want string }{
		{`[keys]` + "\n" + `fly = ["f"]`, `unknown action "fly"`},
		{`[colors]` + "\n" + `accent = "blue"`, `colors.accent: "blue" is not a colour`},
		{`[colors]` + "\n" + `sky = "#fff"`, `unknown colour "sky"`},
		{`colour = 1`, `unknown setting(s): colour`},
		{`[keys]` + "\n" + `quit = [""]`, `bad key`},
		{`notify_command = [""]`, `program name is empty`},
		{`open_command = [""]`, `open_command: the program name is empty`},
		{`bell = "yes"`, `bell`},
	} {
		if _, err := ParseConfig([]byte(bad.in)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseConfig(%q) = %v, want an error with %q", bad.in, err, bad.want)
		}
	}

	home, xdg := t.TempDir(), t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", xdg)
	if _, p, err := LoadConfig(Options{Home: home}); err != nil || p != "" {
		t.Fatalf("no file: %q %v", p, err)
	}
	os.MkdirAll(filepath.Join(xdg, "hush"), 0o755)
	os.WriteFile(filepath.Join(xdg, "hush", ConfigFileName), []byte("bell = false\n"), 0o644)
	if _, p, err := LoadConfig(Options{Home: home}); err != nil || p != filepath.Join(xdg, "hush", ConfigFileName) {
		t.Fatalf("xdg: %q %v", p, err)
	}
	os.WriteFile(filepath.Join(home, ConfigFileName), []byte("[keys]\nquit = [\"x\"]\n"), 0o644)
	cfg, p, err := LoadConfig(Options{Home: home})
	if err != nil || p != filepath.Join(home, ConfigFileName) || cfg.Keys["quit"][0] != "x" {
		t.Fatalf("profile first: %q %v %+v", p, err, cfg)
	}
	if _, _, err := LoadConfig(Options{ConfigPath: filepath.Join(home, "missing.toml")}); err == nil {
		t.Fatal("an explicit missing config is an error")
	}
	os.WriteFile(filepath.Join(home, "broken.toml"), []byte("[keys\n"), 0o644)
	if _, _, err := LoadConfig(Options{ConfigPath: filepath.Join(home, "broken.toml")}); err == nil || !strings.Contains(err.Error(), "broken.toml") {
		t.Fatalf("broken config: %v", err)
	}
	c := openClient(t, filepath.Join(t.TempDir(), "p"))
	if err := Run(context.Background(), c, Options{ConfigPath: filepath.Join(home, "broken.toml")}); err == nil {
		t.Fatal("Run starts with a broken config")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("bell = true\n[keys]\nquit = [\"q\"]\n[colors]\naccent = \"#123456\"\n"))
	f.Add([]byte("notify_command = [\"notify-send\", \"{from}\"]\nserver_url = \"http://x\"\n"))
	f.Add([]byte("[colors]\nread = \"39\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			return
		}
		// A config that parses builds a model's keys and theme.
		km := DefaultKeyMap()
		if err := applyKeys(&km, cfg.Keys); err != nil {
			t.Fatalf("accepted config fails to apply: %v", err)
		}
		if _, err := buildTheme(cfg.Colors); err != nil {
			t.Fatalf("accepted colours fail: %v", err)
		}
	})
}

// TestRenderAnySize: every screen fills exactly the window, from tiny to
// large, without panicking.
func TestRenderAnySize(t *testing.T) {
	d := offlineDriver(t, 80, 24)
	m := d.m
	now := time.Now()
	conv := client.Direct("bob")
	var msgs []client.Message
	for i := range 40 {
		msgs = append(msgs, client.Message{Seq: int64(i + 1), ID: client.MessageID{byte(i)}, Conv: conv, Sender: "bob",
			SentAt: now, Kind: client.KindText, Text: strings.Repeat("word ", i) + "end",
			Quote: &client.Quote{Author: "alice", Text: "quoted"}})
	}
	screens := map[string]func(){
		"register": func() {},
		"main": func() {
			m.reg, m.me, m.registered = nil, "alice", true
			m.convs = []client.Conversation{{ID: conv, Name: "bob", Unread: 3, Muted: true, Last: &msgs[39]}}
			m.chat = chatState{conv: conv, name: "bob", loaded: true, msgs: msgs, selKey: msgKey(&msgs[5])}
			m.focus = paneChat
			m.replyTo = &msgs[3]
			m.contacts["bob"] = client.Contact{Name: "bob", IdentityChanged: true}
		},
		"help":   func() { m.dialog = newHelpDialog(m) },
		"search": func() { s := newSearchDialog(m, ""); s.results = msgs; s.shown = s.seq; m.dialog = s },
		"info":   func() { m.dialog = &infoDialog{msg: msgs[10], recipients: []client.RecipientStatus{{Account: "bob"}}} },
		"safety": func() {
			m.dialog = &safetyDialog{name: "bob", numbers: []client.SafetyNumber{{Account: "bob", Device: 1,
				Digits: strings.Repeat("0123456789", 6), Scannable: []byte(strings.Repeat("x", 70)), Changed: true}}}
		},
		"form":    func() { m.dialog = newGroupDialog(m) },
		"confirm": func() { m.dialog = newConfirmDialog("Leave?", nil) },
	}
	for _, name := range []string{"register", "main", "help", "search", "info", "safety", "form", "confirm"} {
		screens[name]()
		for _, sz := range [][2]int{{1, 1}, {10, 3}, {30, 8}, {59, 14}, {60, 15}, {80, 24}, {200, 60}} {
			d.send(tea.WindowSizeMsg{Width: sz[0], Height: sz[1]})
			lines := strings.Split(m.render(), "\n")
			if len(lines) != sz[1] {
				t.Errorf("%s at %dx%d: %d lines", name, sz[0], sz[1], len(lines))
			}
			for i, l := range lines {
				if w := ansi.StringWidth(l); w != sz[0] {
					t.Errorf("%s at %dx%d: line %d is %d wide: %q", name, sz[0], sz[1], i, w, ansi.Strip(l))
					break
				}
			}
		}
	}
}
