package tui

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/hushchat/hush/client"
)

// View renders the whole screen.
func (m *Model) View() tea.View {
	v := tea.NewView(m.render())
	v.AltScreen = true
	v.MouseMode = tea.MouseModeCellMotion
	v.ReportFocus = true
	v.WindowTitle = "hush"
	if m.me != "" {
		v.WindowTitle = "hush · " + m.me
	}
	return v
}

// render draws exactly height lines of exactly width cells.
func (m *Model) render() string {
	if m.width <= 0 || m.height <= 0 {
		return ""
	}
	bodyH := m.height - 1
	var body []string
	switch {
	case m.reg != nil:
		body = m.reg.view(m, m.width, bodyH)
	case m.dialog != nil:
		body = m.dialog.view(m, m.width, bodyH)
	default:
		body = m.mainBody(bodyH)
	}
	lines := make([]string, 0, m.height)
	for i := 0; i < bodyH; i++ {
		l := ""
		if i < len(body) {
			l = body[i]
		}
		lines = append(lines, fit(l, m.width))
	}
	lines = append(lines, m.statusLine())
	return strings.Join(lines, "\n")
}

func (m *Model) mainBody(h int) []string {
	lw, cw := m.paneWidths()
	if lw == 0 {
		if m.focus == paneList || m.chat.conv == "" {
			return m.listView(m.width, h)
		}
		return m.chatView(cw, h)
	}
	left := m.listView(lw, h)
	right := m.chatView(cw, h)
	sep := m.st.border.Render("│")
	out := make([]string, h)
	for i := range out {
		out[i] = fit(left[i], lw) + sep + fit(right[i], cw)
	}
	return out
}

// ---- conversation list ----

func (m *Model) listView(w, h int) []string {
	out := make([]string, 0, h)
	items := m.listItems()
	if len(items) == 0 {
		out = append(out, m.st.title.Render(" Conversations"), "",
			m.st.dim.Render(" No conversations yet."),
			m.st.dim.Render(" "+m.keys.First(ActNewChat)+": new chat"),
			m.st.dim.Render(" "+m.keys.First(ActNewGroup)+": new group"),
			m.st.dim.Render(" "+m.keys.First(ActHelp)+": help"))
	}
	now := m.now()
	for i := m.convOff; i < len(items) && len(out)+2 <= h; i++ {
		c := items[i]
		selected := i == m.convSel
		marker := " "
		switch {
		case c.ID.IsGroup():
			marker = m.st.accent.Render("#")
		default:
			if p, ok := m.presence[c.ID.Peer()]; ok && p.Online {
				marker = m.st.online.Render("●")
			} else {
				marker = m.st.dim.Render("○")
			}
		}
		name := c.Name
		if name == "" {
			name = m.convName(c.ID)
		}
		ts := ""
		if c.Last != nil {
			ts = listTime(c.Last.SentAt, now)
		} else if !c.LastActivity.IsZero() {
			ts = listTime(c.LastActivity, now)
		}
		nameStyle := m.st.text
		if c.Unread > 0 {
			nameStyle = nameStyle.Bold(true)
		}
		if c.ID == m.chat.conv {
			nameStyle = m.st.accent
		}
		cursor := " "
		if selected {
			cursor = m.st.accent.Render("▌")
			if m.focus != paneList {
				cursor = m.st.dim.Render("▏")
			}
		}
		nameW := max(1, w-3-lipgloss.Width(ts)-1)
		line1 := cursor + marker + " " + fit(nameStyle.Render(name), nameW) + " " + m.st.dim.Render(ts)
		preview := ""
		if c.Last != nil {
			preview = oneLine(messageText(c.Last))
			if c.ID.IsGroup() && c.Last.Kind != client.KindGroupUpdate {
				who := c.Last.Sender
				if c.Last.Outgoing {
					who = "you"
				}
				preview = who + ": " + preview
			} else if c.Last.Outgoing && c.Last.Kind != client.KindGroupUpdate {
				preview = "you: " + preview
			}
		} else if c.ID == m.chat.conv {
			preview = "new chat"
		}
		if t := m.typingIn(c.ID); t != "" {
			preview = t
		}
		badge := ""
		if c.Unread > 0 {
			badge = m.st.banner.Render(" " + strconv.Itoa(c.Unread) + " ")
		}
		if c.Muted {
			badge = m.st.dim.Render("muted") + badge
		}
		pw := max(1, w-3-lipgloss.Width(badge))
		line2 := cursor + "  " + fit(m.st.dim.Render(preview), pw-1) + " " + badge
		out = append(out, line1, line2)
	}
	for len(out) < h {
		out = append(out, "")
	}
	return out
}

// typingIn describes who is typing in conv ("" for nobody).
func (m *Model) typingIn(conv client.ConvID) string {
	t := m.typing[conv]
	if len(t) == 0 {
		return ""
	}
	if !conv.IsGroup() {
		return "typing…"
	}
	var who []string
	for w := range t {
		who = append(who, w)
	}
	slices.Sort(who)
	if len(who) == 1 {
		return who[0] + " is typing…"
	}
	return strings.Join(who, ", ") + " are typing…"
}

// ---- the open conversation ----

func (m *Model) chatWidth() int {
	_, cw := m.paneWidths()
	return cw
}

// inputRows is the height of the input area (rule + input + reply line).
func (m *Model) inputRows() int {
	n := 1 // the rule
	if m.inputAllowed() {
		n += max(1, m.input.Height())
	} else {
		n++
	}
	if m.replyTo != nil {
		n++
	}
	return n + len(m.transfers)
}

func (m *Model) bannerLines(w int) []string {
	if m.chat.conv == "" {
		return nil
	}
	if ch := m.changedMembers(); len(ch) > 0 {
		text := fmt.Sprintf("⚠ %s's safety number changed. Messages are held and sending is blocked until you accept: %s accept · %s compare safety numbers",
			strings.Join(ch, ", "), m.keys.First(ActAccept), m.keys.First(ActSafety))
		var out []string
		for _, l := range wrap(text, max(1, w-2)) {
			out = append(out, m.st.banner.Render(fit(" "+l, w)))
		}
		if len(out) > 3 {
			out = out[:3]
		}
		return out
	}
	if m.chat.conv.IsGroup() && m.chat.group != nil && !m.chat.group.Active {
		return []string{m.st.banner.Render(fit(" You are no longer a member of this group.", w))}
	}
	return nil
}

// messageArea returns the first screen row of the messages and how many
// rows they get.
func (m *Model) messageArea() (int, int) {
	_, cw := m.paneWidths()
	top := 1 + len(m.bannerLines(cw))
	rows := m.height - 1 - top - m.inputRows()
	return top, max(1, rows)
}

func (m *Model) messageRows() int {
	_, rows := m.messageArea()
	return rows
}

func (m *Model) chatView(w, h int) []string {
	if m.chat.conv == "" {
		out := []string{m.st.title.Render(" hush"), ""}
		for _, l := range []string{
			"End-to-end encrypted chat.",
			"",
			m.keys.First(ActOpen) + "  open the selected conversation",
			m.keys.First(ActNewChat) + "      new chat with a user name",
			m.keys.First(ActNewGroup) + "      new group",
			m.keys.First(ActSearchAll) + "      search all conversations",
			m.keys.First(ActHelp) + "      every key binding",
		} {
			out = append(out, " "+m.st.dim.Render(l))
		}
		for len(out) < h {
			out = append(out, "")
		}
		return out[:h]
	}
	out := []string{m.header(w)}
	out = append(out, m.bannerLines(w)...)
	_, rows := m.messageArea()
	lines, _ := m.chatLines(w, rows)
	out = append(out, lines...)
	out = append(out, m.transferLines(w)...)
	if r := m.replyTo; r != nil {
		out = append(out, m.st.dim.Render(fit(" ↳ replying to "+r.Sender+": "+oneLine(messageText(r)), w-12))+m.st.dim.Render(" esc cancels"))
	}
	hint := " " + m.keys.First(ActSend) + " send · " + m.keys.First(ActNewline) + " new line · " + m.keys.First(ActCancel) + " back "
	if m.focus != paneInput {
		hint = " " + m.keys.First(ActCompose) + " write · " + m.keys.First(ActReply) + " reply · " + m.keys.First(ActHelp) + " help "
		if sel := m.selectedMessage(); m.focus == paneChat && sel != nil && sel.Kind == client.KindAttachment {
			hint = " " + m.keys.First(ActSave) + " save · " + m.keys.First(ActOpenFile) + " open · " + m.keys.First(ActReply) + " reply "
		}
	}
	rule := strings.Repeat("─", 2) + hint
	out = append(out, m.st.border.Render(fit(rule+strings.Repeat("─", max(0, w-lipgloss.Width(rule))), w)))
	if m.inputAllowed() {
		out = append(out, strings.Split(m.input.View(), "\n")...)
	} else {
		out = append(out, m.st.warn.Render(" ⚠ blocked: "+m.blockedReason()))
	}
	for len(out) < h {
		out = append(out, "")
	}
	return out[:h]
}

func (m *Model) header(w int) string {
	name := m.chat.name
	var info []string
	if g := m.chat.group; g != nil {
		name = "# " + g.Name
		info = append(info, fmt.Sprintf("%d members", len(g.Members)))
	} else if m.chat.conv.IsGroup() {
		name = "# " + name
	}
	if c, ok := m.convByID(m.chat.conv); ok && c.Muted {
		info = append(info, "muted")
	}
	status := ""
	if t := m.typingIn(m.chat.conv); t != "" {
		status = m.st.online.Render(t)
	} else if p := m.chat.conv.Peer(); p != "" {
		if pr, ok := m.presence[p]; ok {
			if s := lastSeen(pr, m.now()); s != "" {
				if pr.Online {
					status = m.st.online.Render(s)
				} else {
					status = m.st.dim.Render(s)
				}
			}
		}
	}
	trust := ""
	if p := m.chat.conv.Peer(); p != "" {
		if c, ok := m.contacts[p]; ok {
			switch {
			case c.IdentityChanged:
				trust = m.st.err.Render("⚠ key changed")
			case c.Verified:
				trust = m.st.online.Render("✔ verified")
			}
		}
	}
	parts := []string{m.st.title.Render(name)}
	if status != "" {
		parts = append(parts, status)
	}
	for _, i := range info {
		parts = append(parts, m.st.dim.Render(i))
	}
	if trust != "" {
		parts = append(parts, trust)
	}
	return fit(" "+strings.Join(parts, m.st.dim.Render(" · ")), w)
}

// chatLines returns the visible message lines (exactly rows of them,
// bottom-aligned) and, per line, the index of the message it belongs to
// (-1 for none). Only the messages on screen are rendered.
func (m *Model) chatLines(w, rows int) ([]string, []int) {
	ch := &m.chat
	need := ch.scroll + rows
	var lines []string
	var owners []int
	sel := m.selectedIndex()
	i := len(ch.msgs) - 1
	for ; i >= 0 && len(lines) < need; i-- {
		block := m.renderMessage(i, w, i == sel && m.focus == paneChat)
		lines = append(block, lines...)
		own := make([]int, len(block))
		for j := range own {
			own[j] = i
		}
		owners = append(own, owners...)
	}
	if i < 0 && len(lines) < need {
		var top string
		switch {
		case !ch.loaded:
			top = m.st.dim.Render(" loading…")
		case ch.hasOlder:
			top = m.st.dim.Render(" loading older messages…")
		case len(ch.msgs) == 0:
			top = m.st.dim.Render(" No messages yet. Say hi!")
		}
		if top != "" {
			lines = append([]string{top}, lines...)
			owners = append([]int{-1}, owners...)
		}
	}
	end := len(lines) - ch.scroll
	if end < 0 {
		end = 0
	}
	start := max(0, end-rows)
	vis, vo := lines[start:end], owners[start:end]
	for len(vis) < rows {
		vis = append([]string{""}, vis...)
		vo = append([]int{-1}, vo...)
	}
	return vis, vo
}

// chatExtent renders from the newest message back until limit lines:
// it returns the line count reached and whether that is all loaded
// messages.
func (m *Model) chatExtent(limit ...int) (int, bool) {
	w := m.chatWidth()
	lim := 1 << 30
	if len(limit) > 0 {
		lim = limit[0]
	}
	n := 0
	i := len(m.chat.msgs) - 1
	for ; i >= 0 && n < lim; i-- {
		n += len(m.renderMessage(i, w, false))
	}
	return n, i < 0
}

// scrollToSelection scrolls so the selected message shows.
func (m *Model) scrollToSelection() {
	sel := m.selectedIndex()
	if sel < 0 {
		return
	}
	w, rows := m.chatWidth(), m.messageRows()
	start := 0
	for i := len(m.chat.msgs) - 1; i > sel; i-- {
		start += len(m.renderMessage(i, w, false))
	}
	end := start + len(m.renderMessage(sel, w, false))
	if start < m.chat.scroll {
		m.chat.scroll = start
	}
	if end > m.chat.scroll+rows {
		m.chat.scroll = end - rows
	}
}

// renderMessage draws message i of the open conversation (with the day
// separator before it when its day differs from the previous message's).
//
// Blocks are cached: a message's block changes only with the width, its
// status, the selection and its day label, which make up the key.
func (m *Model) renderMessage(i, w int, selected bool) []string {
	msg := &m.chat.msgs[i]
	label := ""
	if i == 0 || !sameDay(m.chat.msgs[i-1].SentAt.Local(), msg.SentAt.Local()) {
		label = dayLabel(msg.SentAt, m.now())
	}
	key := fmt.Sprintf("%s|%d|%t|%d|%s|%s", msgKey(msg), w, selected, msg.Status, msg.Error, label)
	if out, ok := m.blocks[key]; ok {
		return out
	}
	out := m.drawMessage(msg, label, w, selected)
	if len(m.blocks) >= 4096 {
		clear(m.blocks)
	}
	m.blocks[key] = out
	return out
}

func (m *Model) drawMessage(msg *client.Message, dayLabel string, w int, selected bool) []string {
	var out []string
	if dayLabel != "" {
		label := " " + dayLabel + " "
		side := max(0, (w-lipgloss.Width(label))/2)
		out = append(out, m.st.dim.Render(strings.Repeat("─", side)+label+strings.Repeat("─", max(0, w-side-lipgloss.Width(label)))))
	}
	gutter := " "
	if selected {
		gutter = m.st.accent.Render("▌")
	}
	stamp := m.st.dim.Render(clock(msg.SentAt))
	indent := strings.Repeat(" ", 6)
	tickW := 0
	if msg.Outgoing {
		tickW = 3
	}
	tw := max(4, w-7-tickW)
	if msg.Kind == client.KindGroupUpdate {
		for j, l := range wrap("· "+msg.Text, tw) {
			p := stamp + " "
			if j > 0 {
				p = indent
			}
			out = append(out, fit(gutter+p+m.st.system.Render(l), w))
		}
		return out
	}
	nameStyle := m.st.peer
	if msg.Outgoing || msg.Sender == m.me {
		nameStyle = m.st.own
	}
	head := msg.Sender + ": "
	if q := msg.Quote; q != nil {
		// A reply: the sender and the quoted line, then the text below.
		out = append(out, fit(gutter+stamp+" "+nameStyle.Render(msg.Sender)+": "+m.st.dim.Render("┃ "+q.Author+": "+oneLine(q.Text)), w))
		stamp, head = indent[:5], ""
	}
	var body string
	bodyStyle := m.st.text
	switch msg.Kind {
	case client.KindUndecryptable:
		// The client's reason reads "could not be decrypted (…); the
		// sender was asked to send it again".
		reason := msg.Error
		if reason == "" {
			reason = "could not be decrypted"
		}
		body = "⚠ this message " + reason
		bodyStyle = m.st.warn
	case client.KindAttachment:
		body = messageText(msg)
		if a := msg.Attachment; a != nil && a.Size > 0 {
			body += " (" + humanSize(a.Size) + ")"
		}
	default:
		body = msg.Text
	}
	wrapped := wrap(head+body, tw)
	for j, l := range wrapped {
		p := stamp + " "
		if j > 0 {
			p = indent
		}
		if head == "" {
			l = bodyStyle.Render(l)
		} else if j == 0 && strings.HasPrefix(l, head) {
			l = nameStyle.Render(msg.Sender) + ": " + bodyStyle.Render(strings.TrimPrefix(l, head))
		} else if j == 0 && strings.HasPrefix(head, l) {
			l = nameStyle.Render(l)
		} else {
			l = bodyStyle.Render(l)
		}
		line := gutter + p + l
		if msg.Outgoing && j == len(wrapped)-1 {
			line = fit(line, w-3) + " " + m.tick(msg.Status)
		}
		out = append(out, fit(line, w))
	}
	if msg.Outgoing && msg.Status == client.StatusFailed && msg.Error != "" {
		out = append(out, fit(gutter+indent+m.st.err.Render("not sent: "+oneLine(msg.Error)), w))
	}
	return out
}

// ---- status line ----

// statusLine draws the bottom line. Every segment carries the status
// background itself (a nested style's reset would end it early).
func (m *Model) statusLine() string {
	bar := m.st.status
	var dot string
	var conn string
	dotStyle := bar.Foreground(m.theme.Error)
	switch m.state {
	case client.Connected:
		dot, conn, dotStyle = "●", " connected", bar.Foreground(m.theme.Online)
	case client.Connecting:
		dot, conn, dotStyle = "◌", " connecting…", bar.Foreground(m.theme.Warning)
	case client.Reconnecting:
		secs := 0
		if !m.retryAt.IsZero() {
			secs = int(m.retryAt.Sub(m.now()).Round(time.Second) / time.Second)
		}
		dot, conn, dotStyle = "◌", fmt.Sprintf(" reconnecting in %d s", max(0, secs)), bar.Foreground(m.theme.Warning)
	default:
		dot, conn = "○", " offline"
	}
	left := " " + dot + conn
	if m.me != "" {
		left += " · " + m.me
	} else {
		left += " · not registered"
	}
	right := m.keys.First(ActHelp) + " help "
	mid, midStyle := "", bar
	if m.flash != "" {
		mid = m.flash
		if m.flashErr {
			midStyle = bar.Foreground(m.theme.Error)
		}
	} else if m.state != client.Connected && m.stateErr != "" {
		mid, midStyle = m.stateErr, bar.Foreground(m.theme.Dim)
	}
	free := max(0, m.width-lipgloss.Width(left)-lipgloss.Width(right)-2)
	if lipgloss.Width(left) > m.width {
		return bar.Render(fit(left, m.width))
	}
	line := bar.Render(" ") + dotStyle.Render(dot) + bar.Render(strings.TrimPrefix(left, " "+dot)+"  ") +
		midStyle.Render(fit(mid, free)) + bar.Render(right)
	return fit(line, m.width)
}
