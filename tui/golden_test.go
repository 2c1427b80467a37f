package tui

import (
	"context"
	"regexp"
	"strings"
	"testing"

	tea "charm.land/bubbletea/v2"

	"github.com/hushchat/hush/client"
)

// Golden screens: the model's full render, ANSI stripped, at fixed sizes,
// with clock times (and, where they vary per run, dates and safety
// digits) masked. Refresh with: go test ./tui -run Golden -update

var (
	longTimes = regexp.MustCompile(`\b\d{2}:\d{2}:\d{2}\b`)
	dates     = regexp.MustCompile(`\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun)? ?\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)( \d{4})?\b`)
	digits5   = regexp.MustCompile(`\b\d{5}\b`)
)

func maskAll(s string) string {
	s = longTimes.ReplaceAllString(s, "HH:MM:SS")
	s = dates.ReplaceAllString(s, "DATE")
	return digits5.ReplaceAllString(s, "#####")
}

// shot settles d and returns its screen for a golden file.
func shot(d *driver) string {
	d.settle()
	d.m.flash = ""
	return d.screen()
}

func resize(d *driver, w, h int) {
	d.send(tea.WindowSizeMsg{Width: w, Height: h})
}

// goldenWorld: alice, bob and carol with a 1-1 chat (a reply, ticks up to
// read) and a group.
func goldenWorld(t *testing.T) (a, b *driver) {
	ts := startServer(t)
	ca, cb, cc := newClient(t, ts, "alice"), newClient(t, ts, "bob"), newClient(t, ts, "carol")
	ctx := context.Background()
	gid, err := ca.CreateGroup(ctx, "team", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SendGroup(ctx, gid, "standup in five minutes"); err != nil {
		t.Fatal(err)
	}
	_ = cc
	a = newDriver(t, ca, Config{}, 80, 24)
	b = newDriver(t, cb, Config{}, 80, 24)
	b.m.termFocused = false
	a.newChat("bob")
	a.say("hi bob! did you get the report?")
	b.until("bob got it", func() bool {
		c, ok := b.conv(client.Direct("alice"))
		return ok && c.Unread == 1
	})
	b.send(tea.FocusMsg{})
	b.openFromList("alice")
	b.keys("esc", "k")
	b.keys("r")
	b.say("yes, reading it now. it is a long report, so this line wraps around in a narrow window")
	a.until("bob's reply", func() bool {
		return a.findMsg("yes, reading it now. it is a long report, so this line wraps around in a narrow window") != nil
	})
	a.say("great, thanks")
	b.until("bob sees it", func() bool { return b.findMsg("great, thanks") != nil })
	a.until("read", func() bool { return a.findMsg("great, thanks").Status == client.StatusRead })
	a.until("bob online", func() bool { return strings.Contains(a.screen(), "● bob") && strings.Contains(a.screen(), "online") })
	b.until("alice online", func() bool { return strings.Contains(b.screen(), "online") })
	return a, b
}

func TestGoldenScreens(t *testing.T) {
	a, b := goldenWorld(t)

	golden(t, "chat_80x24", shot(a))
	golden(t, "chat_bob_80x24", shot(b))
	resize(a, 60, 15)
	golden(t, "chat_60x15", shot(a))

	// Narrower than 56: one pane at a time.
	resize(a, 50, 15)
	a.keys("esc", "esc")
	golden(t, "list_50x15", shot(a))
	a.keys("enter")
	golden(t, "chat_50x15", shot(a))
	a.keys("esc")

	resize(a, 80, 24)
	a.keys("?")
	golden(t, "help_80x24", shot(a))
	a.keys("esc")

	a.keys("N")
	golden(t, "new_group_80x24", shot(a))
	a.keys("esc")

	a.keys("S")
	a.typeText("report")
	a.until("results", func() bool { return len(a.m.dialog.(*searchDialog).results) == 2 })
	golden(t, "search_80x24", maskAll(shot(a)))
	a.keys("esc")

	// Message info of alice's "great, thanks".
	a.openFromList("bob")
	a.keys("esc")
	a.keys("enter")
	a.until("recipients", func() bool { return a.m.dialog.(*infoDialog).recipients != nil })
	golden(t, "info_80x24", maskAll(shot(a)))
	a.keys("esc")

	// The group.
	a.openFromList("team")
	a.until("group loaded", func() bool { return a.m.chat.group != nil })
	golden(t, "group_80x24", shot(a))

	// Safety number at 60×15: digits only (the QR needs more room).
	a.openFromList("bob")
	a.keys("esc", "v")
	a.until("numbers", func() bool { return a.m.dialog.(*safetyDialog).numbers != nil })
	resize(a, 60, 15)
	golden(t, "safety_60x15", maskAll(shot(a)))
}

func TestGoldenRegister(t *testing.T) {
	c := openClient(t, t.TempDir())
	d := newDriver(t, c, Config{ServerURL: "http://127.0.0.1:8080"}, 60, 15)
	d.typeText("alice")
	golden(t, "register_60x15", shot(d))
}
