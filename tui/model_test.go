package tui

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
)

func (d *driver) findMsg(text string) *client.Message {
	for i := range d.m.chat.msgs {
		if d.m.chat.msgs[i].Text == text {
			return &d.m.chat.msgs[i]
		}
	}
	return nil
}

func (d *driver) conv(id client.ConvID) (client.Conversation, bool) { return d.m.convByID(id) }

// newChat opens a chat with name through the new-chat dialog.
func (d *driver) newChat(name string) {
	d.t.Helper()
	d.keys("n")
	if _, ok := d.m.dialog.(*formDialog); !ok {
		d.t.Fatalf("n did not open the new-chat dialog: %T", d.m.dialog)
	}
	d.typeText(name)
	d.keys("enter")
	if d.m.dialog != nil || d.m.chat.conv != client.Direct(name) || d.m.focus != paneInput {
		d.t.Fatalf("after new chat: dialog %T conv %q focus %d", d.m.dialog, d.m.chat.conv, d.m.focus)
	}
}

func (d *driver) say(text string) {
	d.t.Helper()
	d.typeText(text)
	d.keys("enter")
	d.until("own message "+text+" shown", func() bool { return d.findMsg(text) != nil })
}

// openFromList opens the conversation named name from the list.
func (d *driver) openFromList(name string) {
	d.t.Helper()
	d.until(name+" in the list", func() bool {
		return slices.ContainsFunc(d.m.listItems(), func(c client.Conversation) bool { return c.Name == name })
	})
	if d.m.focus != paneList {
		d.m.setFocus(paneList)
	}
	i := slices.IndexFunc(d.m.listItems(), func(c client.Conversation) bool { return c.Name == name })
	d.keys("home")
	for range i {
		d.keys("j")
	}
	d.keys("enter")
	d.until("conversation "+name+" loaded", func() bool { return d.m.chat.loaded && d.m.chat.name == name })
}

// TestChat: new chat, send, ticks through read, typing, presence, unread
// counts, reply with the quoted line, message info.
func TestChat(t *testing.T) {
	ts := startServer(t)
	ca, cb := newClient(t, ts, "alice"), newClient(t, ts, "bob")
	a := newDriver(t, ca, Config{}, 80, 24)
	b := newDriver(t, cb, Config{}, 80, 24)
	b.m.termFocused = false // bob looks elsewhere until he opens the chat

	a.newChat("bob")
	if !a.screenHas("new chat") {
		t.Fatalf("the new chat is not in the list:\n%s", a.screen())
	}
	a.say("hello bob")
	a.until("✓✓ delivered", func() bool { return a.findMsg("hello bob").Status >= client.StatusDelivered })
	if !strings.Contains(a.screen(), "alice: hello bob") || !strings.Contains(a.screen(), "✓✓") {
		t.Fatalf("alice's screen lacks the message with ✓✓:\n%s", a.screen())
	}

	// Bob: unread badge, bell for an unfocused conversation.
	b.until("alice in bob's list with 1 unread", func() bool {
		c, ok := b.conv(client.Direct("alice"))
		return ok && c.Unread == 1
	})
	b.until("bell", func() bool { return b.bellCount() > 0 })
	if !b.screenHas("hello bob") {
		t.Fatalf("bob's list lacks the preview:\n%s", b.screen())
	}
	if got := a.findMsg("hello bob").Status; got == client.StatusRead {
		t.Fatal("read before bob opened the conversation")
	}
	b.send(tea.FocusMsg{})
	b.openFromList("alice")
	a.until("blue ✓✓ read", func() bool { return a.findMsg("hello bob").Status == client.StatusRead })
	b.until("unread cleared", func() bool { c, _ := b.conv(client.Direct("alice")); return c.Unread == 0 })

	// Typing: bob types, alice's header says so; sending clears it.
	if b.m.focus != paneInput {
		t.Fatalf("opening a conversation focuses the input, focus = %d", b.m.focus)
	}
	b.typeText("hi al")
	a.until("typing… in alice's header", func() bool { return strings.Contains(ansi.Strip(a.m.header(60)), "typing…") })
	b.typeText("ice")
	b.keys("alt+enter")
	b.typeText("second line")
	if got := b.m.input.Value(); got != "hi alice\nsecond line" {
		t.Fatalf("alt+enter should insert a newline: %q", got)
	}
	b.keys("enter")
	a.until("bob's two-line message", func() bool { return a.findMsg("hi alice\nsecond line") != nil })
	if strings.Contains(ansi.Strip(a.m.header(60)), "typing…") {
		t.Fatal("typing… stays after the message arrived")
	}
	a.until("presence: bob online", func() bool { return strings.Contains(ansi.Strip(a.m.header(80)), "online") })

	// Reply: bob selects alice's message and replies.
	b.keys("esc") // input → messages
	if b.m.focus != paneChat {
		t.Fatalf("esc from the input goes to the messages, focus = %d", b.m.focus)
	}
	for b.m.selectedMessage() == nil || b.m.selectedMessage().Text != "hello bob" {
		before := b.m.chat.selKey
		b.keys("k")
		if b.m.chat.selKey == before {
			t.Fatalf("k did not move the selection; screen:\n%s", b.screen())
		}
	}
	b.keys("r")
	if b.m.replyTo == nil || b.m.focus != paneInput || !b.screenHas("replying to alice") {
		t.Fatalf("r: reply %v focus %d\n%s", b.m.replyTo, b.m.focus, b.screen())
	}
	b.say("yes, hello")
	a.until("the reply", func() bool { return a.findMsg("yes, hello") != nil })
	if q := a.findMsg("yes, hello").Quote; q == nil || q.Author != "alice" || q.Text != "hello bob" {
		t.Fatalf("quote = %+v", q)
	}
	if !a.screenHas("┃ alice: hello bob") {
		t.Fatalf("the quoted line is not shown:\n%s", a.screen())
	}

	// Message info on alice's own message: per recipient status.
	a.keys("esc")
	for a.m.selectedMessage().Text != "hello bob" {
		a.keys("up")
	}
	a.keys("enter")
	info, ok := a.m.dialog.(*infoDialog)
	if !ok {
		t.Fatalf("enter on a message opens message info, got %T", a.m.dialog)
	}
	a.until("recipients loaded", func() bool { return len(info.recipients) == 1 })
	if r := info.recipients[0]; r.Account != "bob" || r.Status != client.StatusRead || !a.screenHas("✓✓ read") {
		t.Fatalf("recipients = %+v\n%s", info.recipients, a.screen())
	}
	a.keys("esc")
	if a.m.dialog != nil {
		t.Fatal("esc did not close message info")
	}
}

// TestGroups: create a group, its members see it, add, remove, leave,
// and the group's message ticks aggregate over members.
func TestGroups(t *testing.T) {
	ts := startServer(t)
	ca, cb, cc, cd := newClient(t, ts, "alice"), newClient(t, ts, "bob"), newClient(t, ts, "carol"), newClient(t, ts, "dave")
	a := newDriver(t, ca, Config{}, 80, 24)
	b := newDriver(t, cb, Config{}, 80, 24)
	c := newDriver(t, cc, Config{}, 80, 24)

	a.keys("N")
	a.typeText("team")
	a.keys("tab")
	a.typeText("bob, carol")
	a.keys("enter")
	a.until("group opened", func() bool { return a.m.chat.group != nil && a.m.chat.group.Name == "team" })
	if !strings.Contains(ansi.Strip(a.m.header(80)), "# team · 3 members") {
		t.Fatalf("header = %q", ansi.Strip(a.m.header(80)))
	}
	a.setFocusInput()
	a.say("hi team")
	a.until("delivered to all", func() bool { return a.findMsg("hi team").Status >= client.StatusDelivered })

	b.openFromList("team")
	c.openFromList("team")
	a.until("read by all", func() bool { return a.findMsg("hi team").Status == client.StatusRead })
	// Message info lists every member.
	a.keys("esc")
	for a.m.selectedMessage().Text != "hi team" {
		a.keys("k")
	}
	a.keys("I")
	info := a.m.dialog.(*infoDialog)
	a.until("both recipients", func() bool { return len(info.recipients) == 2 })
	for _, r := range info.recipients {
		if r.Status != client.StatusRead || (r.Account != "bob" && r.Account != "carol") {
			t.Fatalf("recipients = %+v", info.recipients)
		}
	}
	a.keys("esc")

	// Add dave.
	a.keys("+")
	a.typeText("dave")
	a.keys("enter")
	a.until("dave added", func() bool { return a.m.chat.group != nil && a.m.chat.group.HasMember("dave") })
	dd := newDriver(t, cd, Config{}, 80, 24)
	dd.openFromList("team")

	// Remove carol.
	a.keys("-")
	a.typeText("carol")
	a.keys("enter")
	a.until("carol removed", func() bool { return a.m.chat.group != nil && !a.m.chat.group.HasMember("carol") })
	c.until("carol sees she was removed", func() bool { return c.m.chat.group != nil && !c.m.chat.group.Active })
	if c.m.inputAllowed() || !c.screenHas("no longer a member") {
		t.Fatalf("carol can still write:\n%s", c.screen())
	}

	// Bob leaves.
	b.keys("esc", "L")
	if _, ok := b.m.dialog.(*confirmDialog); !ok {
		t.Fatalf("L asks first, got %T", b.m.dialog)
	}
	b.keys("y")
	a.until("bob left", func() bool { return a.m.chat.group != nil && !a.m.chat.group.HasMember("bob") })
	a.until("system line: bob left", func() bool { return a.screenHas("bob left") })
}

func (d *driver) setFocusInput() {
	d.t.Helper()
	if d.m.focus != paneInput {
		d.keys("i")
	}
	if d.m.focus != paneInput {
		d.t.Fatalf("i did not focus the input (focus %d)", d.m.focus)
	}
}

// TestSearch: "/" searches the conversation, "S" everything; enter jumps
// to the hit, paging back through history as needed.
func TestSearch(t *testing.T) {
	ts := startServer(t)
	ca, cb := newClient(t, ts, "alice"), newClient(t, ts, "bob")
	ctx := context.Background()
	if _, err := ca.Send(ctx, "bob", "the needle is here"); err != nil {
		t.Fatal(err)
	}
	for i := range pageSize + 20 { // push the hit out of the first page
		if _, err := ca.Send(ctx, "bob", "filler "+strings.Repeat("x", i%7)); err != nil {
			t.Fatal(err)
		}
	}
	_ = cb
	a := newDriver(t, ca, Config{}, 80, 24)
	a.openFromList("bob")
	if a.findMsg("the needle is here") != nil {
		t.Fatal("the first page should not reach the oldest message")
	}
	a.keys("esc", "/")
	sd, ok := a.m.dialog.(*searchDialog)
	if !ok || sd.conv != client.Direct("bob") {
		t.Fatalf("/ in a conversation searches it: %T", a.m.dialog)
	}
	a.typeText("need")
	a.until("one result", func() bool { return len(sd.results) == 1 })
	if !a.screenHas("the needle is here") {
		t.Fatalf("result not shown:\n%s", a.screen())
	}
	a.keys("enter")
	a.until("jumped to the hit", func() bool {
		sel := a.m.selectedMessage()
		return sel != nil && sel.Text == "the needle is here"
	})
	if !a.screenHas("the needle is here") {
		t.Fatalf("the hit is not on screen:\n%s", a.screen())
	}

	// Search everywhere.
	a.keys("S")
	sd = a.m.dialog.(*searchDialog)
	if sd.conv != "" {
		t.Fatal("S searches all conversations")
	}
	a.typeText("nothing-like-this")
	a.settle()
	if len(sd.results) != 0 || !a.screenHas("No messages found") {
		t.Fatalf("expected no results:\n%s", a.screen())
	}
	a.keys("esc")
}

// TestSafetyNumberAndIdentityChange: the safety-number view (digits in
// groups of five, QR), marking verified, and the blocking banner after a
// key change until it is accepted.
func TestSafetyNumberAndIdentityChange(t *testing.T) {
	ts := startServer(t)
	ca, cb := newClient(t, ts, "alice"), newClient(t, ts, "bob")
	ctx := context.Background()
	a := newDriver(t, ca, Config{}, 100, 30)
	a.newChat("bob")
	a.say("hi")
	b := newDriver(t, cb, Config{}, 80, 24)
	b.openFromList("alice")
	b.say("hey")
	a.until("bob's answer", func() bool { return a.findMsg("hey") != nil })

	a.keys("esc", "v")
	sd, ok := a.m.dialog.(*safetyDialog)
	if !ok {
		t.Fatalf("v opens the safety number, got %T", a.m.dialog)
	}
	a.until("numbers", func() bool { return sd.numbers != nil })
	want, err := cb.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	groups := strings.Fields(want.Grouped())
	if len(groups) != 12 {
		t.Fatalf("want 12 groups of five, got %q", want.Grouped())
	}
	scr := a.screen()
	for i := 0; i < 12; i += 4 {
		if line := strings.Join(groups[i:i+4], " "); !strings.Contains(scr, line) {
			t.Fatalf("bob's digits %q are not on alice's screen:\n%s", line, scr)
		}
	}
	if !strings.Contains(scr, "█") || !strings.Contains(scr, "▀") {
		t.Fatalf("no QR code:\n%s", scr)
	}
	a.keys("V")
	a.until("verified", func() bool { return a.m.contacts["bob"].Verified })
	if !strings.Contains(ansi.Strip(a.m.header(80)), "✔ verified") {
		t.Fatalf("header = %q", ansi.Strip(a.m.header(80)))
	}

	// A key change: alice's profile now holds another key for bob.
	home := clientHome(t, ca)
	ca.Close()
	db, err := store.Open(ctx, filepath.Join(home, "hush.db"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := crypto.GenerateIdentityKeyPair()
	if err := db.StoreIdentity(ctx, crypto.Address{Name: "bob", DeviceID: 1}, crypto.IdentityRecord{Key: other.PublicKey()}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ca = openClient(t, home)
	a = newDriver(t, ca, Config{}, 80, 24)
	b.say("after the change")
	a.until("identity change noticed", func() bool { return a.m.contacts["bob"].IdentityChanged })
	a.openFromList("bob")
	if !a.screenHas("safety number changed") || a.m.inputAllowed() {
		t.Fatalf("no blocking banner:\n%s", a.screen())
	}
	a.keys("i")
	if a.m.focus == paneInput {
		t.Fatal("the input took focus while sending is blocked")
	}
	a.keys("T")
	a.until("accepted", func() bool { return !a.m.contacts["bob"].IdentityChanged })
	a.until("held message released", func() bool { return a.findMsg("after the change") != nil })
	if a.screenHas("safety number changed") || !a.m.inputAllowed() {
		t.Fatalf("banner stays after accepting:\n%s", a.screen())
	}
}

// TestRegisterScreen: a profile without an account asks for a server
// and a name, and registers.
func TestRegisterScreen(t *testing.T) {
	ts := startServer(t)
	c := openClient(t, filepath.Join(t.TempDir(), "new"))
	d := newDriver(t, c, Config{}, 60, 15)
	if d.m.reg == nil || !d.screenHas("Welcome to hush") {
		t.Fatalf("no register screen:\n%s", d.screen())
	}
	d.keys("enter")
	if d.m.reg.err == "" {
		t.Fatal("an empty server URL is refused")
	}
	d.typeText(ts.url)
	d.keys("tab")
	d.typeText("Bad Name")
	d.keys("enter")
	d.until("a clear error", func() bool { return d.m.reg != nil && !d.m.reg.busy && d.m.reg.err != "" })
	if !strings.Contains(d.m.reg.err, "account name") {
		t.Fatalf("err = %q", d.m.reg.err)
	}
	for range len("Bad Name") {
		d.keys("backspace")
	}
	d.typeText("erin")
	d.keys("enter")
	d.until("registered", func() bool { return d.m.registered })
	if d.m.me != "erin" || d.m.reg != nil || !d.screenHas("erin") {
		t.Fatalf("after register: me %q\n%s", d.m.me, d.screen())
	}
	d.until("connected", func() bool { return d.m.state == client.Connected })
}

// TestHelpAndKeys: ? lists every binding; the config rebinds keys.
func TestHelpAndKeys(t *testing.T) {
	ts := startServer(t)
	c := newClient(t, ts, "alice")
	cfg, err := ParseConfig([]byte("[keys]\nnew_chat = [\"ctrl+t\"]\nhelp = [\"f1\", \"?\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := newDriver(t, c, cfg, 80, 24)
	d.keys("?")
	hd, ok := d.m.dialog.(*helpDialog)
	if !ok {
		t.Fatalf("? opens help, got %T", d.m.dialog)
	}
	all := strings.Join(hd.lines, "\n")
	for _, b := range defaultBindings {
		if !strings.Contains(all, b.help) {
			t.Errorf("help lacks %s (%s)", b.act, b.help)
		}
	}
	if !strings.Contains(all, "ctrl+t") {
		t.Error("help does not show the rebound key")
	}
	for range 50 {
		d.keys("j")
	}
	if hd.off == 0 {
		t.Error("j does not scroll the help")
	}
	d.keys("esc")
	d.keys("n")
	if d.m.dialog != nil {
		t.Fatal("n still opens new chat after rebinding it")
	}
	d.keys("ctrl+t")
	if _, ok := d.m.dialog.(*formDialog); !ok {
		t.Fatalf("ctrl+t should open new chat, got %T", d.m.dialog)
	}
	d.keys("esc")
	d.keys("q")
	d.until("quit", func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.quit })
}

// TestMuteAndNotify: a muted conversation rings no bell; the notify
// command runs for an unmuted one.
func TestMuteAndNotify(t *testing.T) {
	ts := startServer(t)
	ca, cb := newClient(t, ts, "alice"), newClient(t, ts, "bob")
	out := filepath.Join(t.TempDir(), "notified")
	cfg := Config{NotifyCommand: []string{"sh", "-c", "printf '%s|%s' \"$1\" \"$2\" > " + out, "sh", "{from}", "{text}"}}
	b := newDriver(t, cb, cfg, 80, 24)
	ctx := context.Background()
	if _, err := ca.Send(ctx, "bob", "ping"); err != nil {
		t.Fatal(err)
	}
	b.until("bell", func() bool { return b.bellCount() == 1 })
	b.until("notify command ran", func() bool { data, _ := readFile(out); return data == "alice|ping" })

	b.until("alice listed", func() bool { _, ok := b.conv(client.Direct("alice")); return ok })
	b.keys("m")
	b.until("muted", func() bool { c, _ := b.conv(client.Direct("alice")); return c.Muted })
	b.settle()
	if !b.screenHas("muted") {
		t.Fatalf("no muted marker:\n%s", b.screen())
	}
	if _, err := ca.Send(ctx, "bob", "pong"); err != nil {
		t.Fatal(err)
	}
	b.until("pong listed", func() bool { c, _ := b.conv(client.Direct("alice")); return c.Last != nil && c.Last.Text == "pong" })
	b.settle()
	if n := b.bellCount(); n != 1 {
		t.Fatalf("a muted conversation rang the bell (%d bells)", n)
	}
}
