package tui

import (
	"context"
	"fmt"
	"strings"

	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/hushchat/hush/client"
)

// A dialog takes the whole screen above the status line until it
// closes (it sets m.dialog to nil). Each has its own keys, listed in
// its footer.
type dialog interface {
	update(m *Model, msg tea.Msg) tea.Cmd
	view(m *Model, w, h int) []string
}

// scroller is a dialog that the mouse wheel scrolls.
type scroller interface {
	scroll(up bool)
}

func (m *Model) closeDialog() tea.Cmd {
	m.dialog = nil
	if m.focus == paneInput {
		return tea.Batch(m.input.Focus(), m.maybeMarkRead())
	}
	return m.maybeMarkRead()
}

func frame(m *Model, title string, body []string, footer string, w, h int) []string {
	out := []string{m.st.title.Render(" " + title), ""}
	for _, l := range body {
		if len(out) >= h-1 {
			break
		}
		out = append(out, l)
	}
	for len(out) < h-1 {
		out = append(out, "")
	}
	return append(out, m.st.dim.Render(fit(" "+footer, w)))
}

func newTextInput(placeholder string, w int) textinput.Model {
	ti := textinput.New()
	ti.Prompt = "› "
	ti.Placeholder = placeholder
	ti.CharLimit = 512
	ti.SetWidth(max(10, w-20))
	return ti
}

// ---- forms (new chat, new group, members, rename) ----

type formDialog struct {
	title  string
	labels []string
	fields []textinput.Model
	idx    int
	hint   string
	err    string
	submit func(m *Model, vals []string) (tea.Cmd, error)
}

func (d *formDialog) focusCmd() tea.Cmd { return d.fields[d.idx].Focus() }

func (d *formDialog) update(m *Model, msg tea.Msg) tea.Cmd {
	if k, ok := msg.(tea.KeyPressMsg); ok {
		switch {
		case m.keys.Is(k, ActCancel):
			return m.closeDialog()
		case k.String() == "enter":
			if d.idx < len(d.fields)-1 {
				return d.move(1)
			}
			vals := make([]string, len(d.fields))
			for i, f := range d.fields {
				vals[i] = strings.TrimSpace(f.Value())
			}
			cmd, err := d.submit(m, vals)
			if err != nil {
				d.err = err.Error()
				return nil
			}
			if m.dialog == d {
				m.dialog = nil
			}
			return cmd
		case k.String() == "tab" || k.String() == "down":
			return d.move(1)
		case k.String() == "shift+tab" || k.String() == "up":
			return d.move(-1)
		}
	}
	var cmd tea.Cmd
	d.fields[d.idx], cmd = d.fields[d.idx].Update(msg)
	return cmd
}

func (d *formDialog) move(delta int) tea.Cmd {
	d.fields[d.idx].Blur()
	d.idx = (d.idx + delta + len(d.fields)) % len(d.fields)
	return d.fields[d.idx].Focus()
}

func (d *formDialog) view(m *Model, w, h int) []string {
	var body []string
	for i, f := range d.fields {
		label := " " + d.labels[i]
		if i == d.idx {
			label = m.st.accent.Render(label)
		}
		body = append(body, label, "   "+f.View(), "")
	}
	if d.hint != "" {
		for _, l := range wrap(d.hint, max(10, w-2)) {
			body = append(body, " "+m.st.dim.Render(l))
		}
	}
	if d.err != "" {
		body = append(body, "")
		for _, l := range wrap(d.err, max(10, w-2)) {
			body = append(body, " "+m.st.err.Render(l))
		}
	}
	return frame(m, d.title, body, "enter confirm · tab next field · esc cancel", w, h)
}

func newForm(m *Model, title, hint string, labels []string, submit func(m *Model, vals []string) (tea.Cmd, error)) *formDialog {
	d := &formDialog{title: title, labels: labels, hint: hint, submit: submit}
	for _, l := range labels {
		d.fields = append(d.fields, newTextInput(l, m.width))
	}
	return d
}

func newChatDialog(m *Model) *formDialog {
	return newForm(m, "New chat", "Any hush user name on your server. The chat appears in the list with its first message.",
		[]string{"User name"}, func(m *Model, v []string) (tea.Cmd, error) {
			if v[0] == "" {
				return nil, fmt.Errorf("type a user name")
			}
			return m.startChat(v[0])
		})
}

func newGroupDialog(m *Model) *formDialog {
	return newForm(m, "New group", "Members: user names separated by commas or spaces. You become the group's admin.",
		[]string{"Group name", "Members"}, func(m *Model, v []string) (tea.Cmd, error) {
			if v[0] == "" {
				return nil, fmt.Errorf("give the group a name")
			}
			names := parseNames(v[1])
			if len(names) == 0 {
				return nil, fmt.Errorf("add at least one member")
			}
			return m.createGroup(v[0], names), nil
		})
}

func newMembersDialog(m *Model, add bool) *formDialog {
	title, hint := "Add members to "+m.chat.name, "User names separated by commas or spaces."
	if !add {
		title = "Remove members from " + m.chat.name
		if g := m.chat.group; g != nil {
			var names []string
			for _, mem := range g.Members {
				names = append(names, mem.Account)
			}
			hint = "Members: " + strings.Join(names, ", ") + ". Only admins can remove; every remaining member rotates its key."
		}
	}
	return newForm(m, title, hint, []string{"User names"}, func(m *Model, v []string) (tea.Cmd, error) {
		names := parseNames(v[0])
		if len(names) == 0 {
			return nil, fmt.Errorf("type at least one user name")
		}
		return m.changeMembers(add, names), nil
	})
}

func newRenameDialog(m *Model) *formDialog {
	d := newForm(m, "Rename "+m.chat.name, "", []string{"New name"}, func(m *Model, v []string) (tea.Cmd, error) {
		if v[0] == "" {
			return nil, fmt.Errorf("type a name")
		}
		return m.renameGroup(v[0]), nil
	})
	d.fields[0].SetValue(m.chat.name)
	return d
}

// ---- confirm ----

type confirmDialog struct {
	question string
	yes      func(m *Model) tea.Cmd
}

func newConfirmDialog(q string, yes func(m *Model) tea.Cmd) *confirmDialog {
	return &confirmDialog{question: q, yes: yes}
}

func (d *confirmDialog) update(m *Model, msg tea.Msg) tea.Cmd {
	k, ok := msg.(tea.KeyPressMsg)
	if !ok {
		return nil
	}
	switch k.String() {
	case "y", "Y", "enter":
		m.dialog = nil
		return d.yes(m)
	case "n", "N", "esc", "q":
		return m.closeDialog()
	}
	return nil
}

func (d *confirmDialog) view(m *Model, w, h int) []string {
	return frame(m, "Confirm", []string{" " + d.question}, "y/enter yes · n/esc no", w, h)
}

// ---- help ----

type helpDialog struct {
	lines []string
	off   int
	h     int
}

func newHelpDialog(m *Model) *helpDialog {
	lines := m.keys.HelpLines()
	lines = append(lines, "", "# Commands (type them in the input)",
		"  /new NAME                    new chat",
		"  /group NAME MEMBER…          create a group",
		"  /add NAME… · /remove NAME…   change group members",
		"  /leave · /rename NAME        leave or rename the group",
		"  /search WORDS                search this conversation",
		"  /file PATH                   send a file",
		"  /mute                        mute / unmute",
		"  /safety [NAME] · /trust      safety number · accept a changed key",
		"  /help · /quit",
		"  //text                       send text starting with /",
		"", "# Mouse",
		"  wheel scrolls the list or the messages; a click opens a conversation",
		"  or selects a message",
	)
	return &helpDialog{lines: lines}
}

func (d *helpDialog) scroll(up bool) {
	if up {
		d.off = max(0, d.off-3)
	} else {
		d.off = min(max(0, len(d.lines)-d.h), d.off+3)
	}
}

func (d *helpDialog) update(m *Model, msg tea.Msg) tea.Cmd {
	k, ok := msg.(tea.KeyPressMsg)
	if !ok {
		return nil
	}
	switch {
	case m.keys.Is(k, ActDown):
		d.off = min(max(0, len(d.lines)-d.h), d.off+1)
	case m.keys.Is(k, ActUp):
		d.off = max(0, d.off-1)
	case m.keys.Is(k, ActPageDown), k.String() == "space":
		d.off = min(max(0, len(d.lines)-d.h), d.off+d.h)
	case m.keys.Is(k, ActPageUp):
		d.off = max(0, d.off-d.h)
	case m.keys.Is(k, ActCancel), m.keys.Is(k, ActHelp), m.keys.Is(k, ActQuit):
		return m.closeDialog()
	}
	return nil
}

func (d *helpDialog) view(m *Model, w, h int) []string {
	d.h = max(1, h-3)
	d.off = min(d.off, max(0, len(d.lines)-d.h))
	var body []string
	for _, l := range d.lines[d.off:] {
		if strings.HasPrefix(l, "# ") {
			body = append(body, m.st.accent.Render(" "+strings.TrimPrefix(l, "# ")))
		} else {
			body = append(body, l)
		}
	}
	footer := fmt.Sprintf("↑/↓ scroll · esc close · %d–%d of %d", d.off+1, min(len(d.lines), d.off+d.h), len(d.lines))
	return frame(m, "Keys", body, footer, w, h)
}

// ---- message info ----

type infoDialog struct {
	msg        client.Message
	recipients []client.RecipientStatus
	err        error
}

func newInfoDialog(m *Model, msg client.Message) *infoDialog { return &infoDialog{msg: msg} }

func (d *infoDialog) update(m *Model, msg tea.Msg) tea.Cmd {
	if k, ok := msg.(tea.KeyPressMsg); ok {
		switch {
		case m.keys.Is(k, ActCancel), m.keys.Is(k, ActQuit), m.keys.Is(k, ActOpen), m.keys.Is(k, ActInfo):
			return m.closeDialog()
		case m.keys.Is(k, ActReply):
			m.dialog = nil
			return m.startReply()
		}
	}
	return nil
}

func (d *infoDialog) view(m *Model, w, h int) []string {
	x := &d.msg
	body := []string{
		" From:     " + x.Sender + fmt.Sprintf(" (device %d)", x.SenderDevice),
		" Sent:     " + x.SentAt.Local().Format("Mon 2 Jan 2006 15:04:05"),
	}
	if !x.Outgoing {
		body = append(body, " Received: "+x.Received.Local().Format("Mon 2 Jan 2006 15:04:05"))
	}
	body = append(body, " Kind:     "+string(x.Kind))
	if x.Error != "" {
		body = append(body, " Error:    "+m.st.err.Render(x.Error))
	}
	if x.Outgoing {
		body = append(body, " Status:   "+statusWord(x.Status), "", m.st.accent.Render(" Recipients"))
		switch {
		case d.err != nil:
			body = append(body, " "+m.st.err.Render(d.err.Error()))
		case d.recipients == nil:
			body = append(body, m.st.dim.Render(" loading…"))
		}
		for _, r := range d.recipients {
			when := ""
			if !r.Updated.IsZero() {
				when = r.Updated.Local().Format("2 Jan 15:04:05")
			}
			body = append(body, fmt.Sprintf("   %-20s %-14s %s", r.Account, statusWord(r.Status), when))
		}
	}
	body = append(body, "", m.st.accent.Render(" Text"))
	for _, l := range wrap(messageText(x), max(10, w-4)) {
		body = append(body, "   "+l)
	}
	return frame(m, "Message info", body, "esc close · "+m.keys.First(ActReply)+" reply", w, h)
}

// ---- safety number ----

type safetyDialog struct {
	name    string
	members []string // in a group: the others, to switch between
	numbers []client.SafetyNumber
	err     error
	dev     int
}

func (d *safetyDialog) update(m *Model, msg tea.Msg) tea.Cmd {
	k, ok := msg.(tea.KeyPressMsg)
	if !ok {
		return nil
	}
	switch {
	case m.keys.Is(k, ActCancel), m.keys.Is(k, ActQuit):
		return m.closeDialog()
	case m.keys.Is(k, ActVerify):
		name := d.name
		m.dialog = nil
		return m.do(name+" marked verified", "", func(ctx context.Context, c *client.Client) error { return c.Verify(ctx, name) })
	case m.keys.Is(k, ActAccept):
		name := d.name
		m.dialog = nil
		return m.do("accepted the new identity key of "+name, "", func(ctx context.Context, c *client.Client) error { return c.Trust(ctx, name) })
	case m.keys.Is(k, ActDown), k.String() == "n":
		if len(d.numbers) > 1 {
			d.dev = (d.dev + 1) % len(d.numbers)
		}
	case m.keys.Is(k, ActUp), k.String() == "p":
		if len(d.numbers) > 1 {
			d.dev = (d.dev + len(d.numbers) - 1) % len(d.numbers)
		}
	case k.String() == "tab" && len(d.members) > 1:
		i := 0
		for j, n := range d.members {
			if n == d.name {
				i = j + 1
			}
		}
		d.name, d.numbers, d.err, d.dev = d.members[i%len(d.members)], nil, nil, 0
		return m.loadSafety(d.name)
	}
	return nil
}

func (d *safetyDialog) view(m *Model, w, h int) []string {
	footer := m.keys.First(ActVerify) + " mark verified · esc close"
	if len(d.members) > 1 {
		footer += " · tab next member"
	}
	title := "Safety number with " + d.name
	switch {
	case d.err != nil:
		return frame(m, title, []string{" " + m.st.err.Render(d.err.Error())}, footer, w, h)
	case d.numbers == nil:
		return frame(m, title, []string{m.st.dim.Render(" loading…")}, footer, w, h)
	}
	sn := d.numbers[d.dev]
	if len(d.numbers) > 1 {
		title += fmt.Sprintf(" · device %d (%d of %d, ↑/↓)", sn.Device, d.dev+1, len(d.numbers))
		footer += " · ↑/↓ device"
	}
	groups := strings.Fields(sn.Grouped())
	var text []string
	for i := 0; i < len(groups); i += 4 {
		text = append(text, " "+strings.Join(groups[i:min(i+4, len(groups))], " "))
	}
	text = append(text, "")
	switch {
	case sn.Changed:
		text = append(text, m.st.err.Render(" ⚠ changed, not accepted"), " "+m.keys.First(ActAccept)+" accept the new key")
		footer = m.keys.First(ActAccept) + " accept · " + footer
	case sn.Verified:
		text = append(text, m.st.online.Render(" ✔ verified"))
	default:
		text = append(text, m.st.dim.Render(" not verified"))
	}
	text = append(text, "", " Compare these digits with "+d.name+"'s", " screen, or scan the code. If they", " match, press "+m.keys.First(ActVerify)+".")
	qr, err := qrLines(sn.Scannable)
	var body []string
	qrW := 0
	if err == nil && len(qr) > 0 {
		qrW = lipgloss.Width(qr[0])
	}
	switch {
	case err == nil && qrW+30 <= w && len(qr)+3 <= h:
		// QR on the left, digits on the right.
		for i := 0; i < max(len(qr), len(text)); i++ {
			l := strings.Repeat(" ", qrW)
			if i < len(qr) {
				l = qr[i]
			}
			r := ""
			if i < len(text) {
				r = text[i]
			}
			body = append(body, " "+l+"  "+r)
		}
	default:
		body = text
		if err == nil {
			body = append(body, "", m.st.dim.Render(fmt.Sprintf(" (enlarge the window to %d×%d to see the QR code)", qrW+32, len(qr)+4)))
		}
	}
	return frame(m, title, body, footer, w, h)
}

// ---- search ----

type searchDialog struct {
	conv    client.ConvID
	input   textinput.Model
	results []client.Message
	err     error
	sel     int
	seq     int
	shown   int // seq of the results shown
	h       int
	off     int
}

func newSearchDialog(m *Model, conv client.ConvID) *searchDialog {
	return &searchDialog{conv: conv, input: newTextInput("words to find", m.width)}
}

func (d *searchDialog) setQuery(m *Model, q string) { d.input.SetValue(q) }

func (d *searchDialog) run(m *Model) tea.Cmd {
	d.seq++
	q := strings.TrimSpace(d.input.Value())
	if q == "" {
		d.results, d.err, d.shown = nil, nil, d.seq
		return nil
	}
	return m.search(d.seq, q, d.conv)
}

func (d *searchDialog) onResults(msg searchResultsMsg) {
	if msg.seq < d.shown {
		return // a newer query answered first
	}
	d.shown, d.results, d.err = msg.seq, msg.results, msg.err
	d.sel, d.off = 0, 0
}

func (d *searchDialog) scroll(up bool) {
	if up {
		d.sel = max(0, d.sel-1)
	} else {
		d.sel = min(len(d.results)-1, d.sel+1)
	}
}

func (d *searchDialog) update(m *Model, msg tea.Msg) tea.Cmd {
	if k, ok := msg.(tea.KeyPressMsg); ok {
		switch k.String() {
		case "esc":
			return m.closeDialog()
		case "up", "ctrl+p":
			d.scroll(true)
			return nil
		case "down", "ctrl+n":
			d.scroll(false)
			return nil
		case "enter":
			if d.sel < 0 || d.sel >= len(d.results) {
				return nil
			}
			r := d.results[d.sel]
			m.dialog = nil
			cmd := m.openConv(r.Conv, msgKey(&r))
			return tea.Batch(cmd, m.setFocus(paneChat))
		}
	}
	before := d.input.Value()
	var cmd tea.Cmd
	d.input, cmd = d.input.Update(msg)
	if d.input.Value() != before {
		return tea.Batch(cmd, d.run(m))
	}
	return cmd
}

func (d *searchDialog) view(m *Model, w, h int) []string {
	title := "Search all conversations"
	if d.conv != "" {
		title = "Search in " + m.convName(d.conv)
	}
	body := []string{"   " + d.input.View(), ""}
	switch {
	case d.err != nil:
		body = append(body, " "+m.st.err.Render(d.err.Error()))
	case strings.TrimSpace(d.input.Value()) == "":
		body = append(body, m.st.dim.Render(" Type words to find; the last word matches as a prefix."))
	case d.shown == d.seq && len(d.results) == 0:
		body = append(body, m.st.dim.Render(" No messages found."))
	}
	d.h = max(1, h-6)
	if d.sel < d.off {
		d.off = d.sel
	}
	if d.sel >= d.off+d.h {
		d.off = d.sel - d.h + 1
	}
	now := m.now()
	for i := d.off; i < len(d.results) && i < d.off+d.h; i++ {
		r := &d.results[i]
		where := ""
		if d.conv == "" {
			where = m.convName(r.Conv) + " · "
		}
		line := fmt.Sprintf(" %-6s %s%s: %s", listTime(r.SentAt, now), where, r.Sender, oneLine(messageText(r)))
		if i == d.sel {
			line = m.st.accent.Render("▌") + m.st.selected.Render(fit(line[1:], w-1))
		}
		body = append(body, line)
	}
	footer := "enter open · ↑/↓ select · esc close"
	if len(d.results) > 0 {
		footer += fmt.Sprintf(" · %d found", len(d.results))
	}
	return frame(m, title, body, footer, w, h)
}

// ---- register ----

type registerForm struct {
	fields []textinput.Model
	idx    int
	busy   bool
	err    string
}

func newRegisterForm(server string) *registerForm {
	f := &registerForm{}
	s := newTextInput("http://127.0.0.1:8080", 80)
	s.SetValue(server)
	n := newTextInput("your user name (a-z, 0-9, . _ -)", 80)
	f.fields = []textinput.Model{s, n}
	if server != "" {
		f.idx = 1
	}
	return f
}

func (f *registerForm) setWidth(w int) {
	for i := range f.fields {
		f.fields[i].SetWidth(max(10, w-8))
	}
}

func (f *registerForm) focusCmd() tea.Cmd { return f.fields[f.idx].Focus() }

func (f *registerForm) update(m *Model, msg tea.Msg) tea.Cmd {
	if f.busy {
		return nil
	}
	if k, ok := msg.(tea.KeyPressMsg); ok {
		switch k.String() {
		case "esc":
			return m.quit()
		case "tab", "down", "shift+tab", "up":
			f.fields[f.idx].Blur()
			f.idx = 1 - f.idx
			return f.fields[f.idx].Focus()
		case "enter":
			server, name := strings.TrimSpace(f.fields[0].Value()), strings.TrimSpace(f.fields[1].Value())
			switch {
			case server == "":
				f.err = "type the server URL (for example http://127.0.0.1:8080)"
				f.fields[1].Blur()
				f.idx = 0
				return f.fields[0].Focus()
			case name == "":
				f.err = "choose a user name"
				f.fields[0].Blur()
				f.idx = 1
				return f.fields[1].Focus()
			}
			f.busy, f.err = true, ""
			return m.register(server, name)
		}
	}
	var cmd tea.Cmd
	f.fields[f.idx], cmd = f.fields[f.idx].Update(msg)
	return cmd
}

func (f *registerForm) view(m *Model, w, h int) []string {
	var body []string
	for _, l := range wrap("This profile has no account yet. Register one on a hush server.", max(10, w-2)) {
		body = append(body, " "+l)
	}
	body = append(body, "")
	labels := []string{"Server URL", "User name"}
	for i, fl := range f.fields {
		l := " " + labels[i]
		if i == f.idx {
			l = m.st.accent.Render(l)
		}
		body = append(body, l, "   "+fl.View(), "")
	}
	switch {
	case f.busy:
		body = append(body, m.st.dim.Render(" registering… (creating keys and uploading the public ones)"))
	case f.err != "":
		for _, l := range wrap(f.err, max(10, w-2)) {
			body = append(body, " "+m.st.err.Render(l))
		}
	}
	return frame(m, "Welcome to hush", body, "enter register · tab next field · esc quit", w, h)
}
