package tui

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/protocol"
)

// onKey routes a key press: the register screen or a dialog when one is
// open, else the input when it has focus, else the global and pane keys.
func (m *Model) onKey(msg tea.KeyPressMsg) tea.Cmd {
	k := m.keys
	if k.Is(msg, ActForceQuit) {
		return m.quit()
	}
	if m.reg != nil {
		return m.reg.update(m, msg)
	}
	if m.dialog != nil {
		return m.dialog.update(m, msg)
	}
	if m.focus == paneInput {
		return m.inputKey(msg)
	}
	switch {
	case k.Is(msg, ActQuit):
		return m.quit()
	case k.Is(msg, ActHelp):
		m.dialog = newHelpDialog(m)
		return nil
	case k.Is(msg, ActNextPane):
		return m.cycleFocus(1)
	case k.Is(msg, ActPrevPane):
		return m.cycleFocus(-1)
	case k.Is(msg, ActNewChat):
		m.dialog = newChatDialog(m)
		return m.dialog.(*formDialog).focusCmd()
	case k.Is(msg, ActNewGroup):
		m.dialog = newGroupDialog(m)
		return m.dialog.(*formDialog).focusCmd()
	case k.Is(msg, ActSearchAll):
		return m.openSearch("")
	case k.Is(msg, ActSearch):
		if m.focus == paneList || m.chat.conv == "" {
			return m.openSearch("")
		}
		return m.openSearch(m.chat.conv)
	case k.Is(msg, ActNextUnread):
		return m.nextUnread()
	case k.Is(msg, ActMute):
		return m.toggleMute()
	case k.Is(msg, ActScrollUp):
		return m.scrollChat(3)
	case k.Is(msg, ActScrollDown):
		return m.scrollChat(-3)
	}
	if m.focus == paneList {
		if cmd, ok := m.listKey(msg); ok {
			return cmd
		}
	}
	if m.chat.conv == "" {
		return nil
	}
	if m.focus == paneChat {
		if cmd, ok := m.chatKey(msg); ok {
			return cmd
		}
	}
	return m.convAction(msg)
}

// convAction handles the keys that act on the open conversation.
func (m *Model) convAction(msg tea.KeyPressMsg) tea.Cmd {
	k := m.keys
	switch {
	case k.Is(msg, ActCompose):
		return m.setFocus(paneInput)
	case k.Is(msg, ActSafety):
		return m.openSafety("")
	case k.Is(msg, ActAttach):
		if !m.inputAllowed() {
			m.setFlash("sending is blocked: "+m.blockedReason(), true)
			return nil
		}
		m.dialog = newFileDialog(m)
		return m.dialog.(*formDialog).focusCmd()
	case k.Is(msg, ActAccept):
		return m.acceptIdentity()
	case k.Is(msg, ActAddMember), k.Is(msg, ActRemove), k.Is(msg, ActLeave), k.Is(msg, ActRename):
		if !m.chat.conv.IsGroup() {
			m.setFlash("that works in a group conversation", true)
			return nil
		}
		switch {
		case k.Is(msg, ActAddMember):
			m.dialog = newMembersDialog(m, true)
		case k.Is(msg, ActRemove):
			m.dialog = newMembersDialog(m, false)
		case k.Is(msg, ActRename):
			m.dialog = newRenameDialog(m)
		default:
			m.dialog = newConfirmDialog("Leave group "+m.chat.name+"?", func(m *Model) tea.Cmd { return m.leaveGroup() })
			return nil
		}
		return m.dialog.(*formDialog).focusCmd()
	}
	return nil
}

func (m *Model) quit() tea.Cmd {
	m.quitting = true
	return tea.Sequence(m.stopTyping(), tea.Quit)
}

func (m *Model) cycleFocus(d int) tea.Cmd {
	order := []pane{paneList, paneChat, paneInput}
	i := slices.Index(order, m.focus)
	for range order {
		i = (i + d + len(order)) % len(order)
		p := order[i]
		if p != paneList && m.chat.conv == "" {
			continue
		}
		if p == paneInput && !m.inputAllowed() {
			continue
		}
		return m.setFocus(p)
	}
	return nil
}

// ---- the conversation list ----

func (m *Model) listKey(msg tea.KeyPressMsg) (tea.Cmd, bool) {
	k := m.keys
	n := len(m.listItems())
	switch {
	case k.Is(msg, ActUp):
		m.convSel--
	case k.Is(msg, ActDown):
		m.convSel++
	case k.Is(msg, ActPageUp):
		m.convSel -= max(1, m.listRows())
	case k.Is(msg, ActPageDown):
		m.convSel += max(1, m.listRows())
	case k.Is(msg, ActTop):
		m.convSel = 0
	case k.Is(msg, ActBottom):
		m.convSel = n - 1
	case k.Is(msg, ActOpen):
		if n == 0 {
			return nil, true
		}
		m.clampList()
		conv := m.listItems()[m.convSel].ID
		cmd := m.openConv(conv, "")
		return tea.Batch(cmd, m.setFocus(paneInput)), true
	default:
		return nil, false
	}
	m.clampList()
	return nil, true
}

// listRows: how many conversations the list shows.
func (m *Model) listRows() int { return max(1, (m.height-1)/2) }

func (m *Model) clampList() {
	n := len(m.listItems())
	m.convSel = max(0, min(m.convSel, n-1))
	rows := m.listRows()
	if m.convSel < m.convOff {
		m.convOff = m.convSel
	}
	if m.convSel >= m.convOff+rows {
		m.convOff = m.convSel - rows + 1
	}
	m.convOff = max(0, min(m.convOff, n-rows))
}

func (m *Model) nextUnread() tea.Cmd {
	items := m.listItems()
	for d := 1; d <= len(items); d++ {
		i := (m.convSel + d) % len(items)
		if items[i].Unread > 0 {
			m.convSel = i
			m.clampList()
			return m.openConv(items[i].ID, "")
		}
	}
	m.setFlash("no unread messages", false)
	return nil
}

// ---- the open conversation ----

func (m *Model) chatKey(msg tea.KeyPressMsg) (tea.Cmd, bool) {
	k := m.keys
	ch := &m.chat
	i := m.selectedIndex()
	switch {
	case k.Is(msg, ActUp):
		if i < 0 {
			i = len(ch.msgs)
		}
		if i > 0 {
			m.selectAt(i - 1)
		}
		return m.maybeLoadOlder(), true
	case k.Is(msg, ActDown):
		if i >= 0 && i < len(ch.msgs)-1 {
			m.selectAt(i + 1)
		}
		return nil, true
	case k.Is(msg, ActPageUp):
		return m.scrollChat(max(1, m.messageRows()-1)), true
	case k.Is(msg, ActPageDown):
		return m.scrollChat(-max(1, m.messageRows()-1)), true
	case k.Is(msg, ActTop):
		if len(ch.msgs) > 0 {
			m.selectAt(0)
		}
		return m.maybeLoadOlder(), true
	case k.Is(msg, ActBottom):
		if len(ch.msgs) > 0 {
			m.selectAt(len(ch.msgs) - 1)
		}
		ch.scroll = 0
		return nil, true
	case k.Is(msg, ActBack):
		return m.setFocus(paneList), true
	case k.Is(msg, ActReply):
		return m.startReply(), true
	case k.Is(msg, ActSave):
		if sel, ok := m.selectedAttachment(); ok {
			m.dialog = newSaveDialog(m, *sel.Attachment)
			return m.dialog.(*formDialog).focusCmd(), true
		}
		return nil, true
	case k.Is(msg, ActOpenFile):
		if sel, ok := m.selectedAttachment(); ok {
			return m.openFile(*sel.Attachment), true
		}
		return nil, true
	case k.Is(msg, ActOpen), k.Is(msg, ActInfo):
		if sel := m.selectedMessage(); sel != nil {
			m.dialog = newInfoDialog(m, *sel)
			if sel.Outgoing {
				return m.loadRecipients(sel.ID), true
			}
		}
		return nil, true
	}
	return nil, false
}

func (m *Model) selectAt(i int) {
	m.chat.selKey = msgKey(&m.chat.msgs[i])
	m.scrollToSelection()
}

func (m *Model) scrollChat(lines int) tea.Cmd {
	m.chat.scroll = max(0, m.chat.scroll+lines)
	total, _ := m.chatExtent()
	if maxScroll := max(0, total-m.messageRows()); m.chat.scroll > maxScroll {
		m.chat.scroll = maxScroll
	}
	return m.maybeLoadOlder()
}

// maybeLoadOlder loads the page before the loaded messages when the view
// comes near their top.
func (m *Model) maybeLoadOlder() tea.Cmd {
	ch := &m.chat
	if !ch.hasOlder || ch.loadingOlder {
		return nil
	}
	total, _ := m.chatExtent()
	near := ch.scroll+2*m.messageRows() >= total
	if i := m.selectedIndex(); i >= 0 && i < 10 {
		near = true
	}
	if !near {
		return nil
	}
	return m.loadOlder()
}

func (m *Model) startReply() tea.Cmd {
	sel := m.selectedMessage()
	if sel == nil || sel.Kind == client.KindGroupUpdate || sel.Kind == client.KindUndecryptable {
		m.setFlash("select a message to reply to (↑/↓)", true)
		return nil
	}
	if !m.inputAllowed() {
		m.setFlash("this conversation cannot be written to now", true)
		return nil
	}
	q := *sel
	m.replyTo = &q
	return m.setFocus(paneInput)
}

// ---- the input ----

func (m *Model) inputKey(msg tea.KeyPressMsg) tea.Cmd {
	k := m.keys
	switch {
	case k.Is(msg, ActSend):
		return m.submit()
	case k.Is(msg, ActCancel):
		if m.replyTo != nil {
			m.replyTo = nil
			return nil
		}
		return m.setFocus(paneChat)
	case k.Is(msg, ActNextPane):
		return m.cycleFocus(1)
	case k.Is(msg, ActPrevPane):
		return m.cycleFocus(-1)
	case msg.Text == "" && k.Is(msg, ActAttach):
		// Only a non-text key (ctrl+o) attaches from the input.
		m.dialog = newFileDialog(m)
		return m.dialog.(*formDialog).focusCmd()
	case k.Is(msg, ActScrollUp), msg.String() == "pgup":
		return m.scrollChat(max(1, m.messageRows()-1))
	case k.Is(msg, ActScrollDown), msg.String() == "pgdown":
		return m.scrollChat(-max(1, m.messageRows()-1))
	}
	return m.updateInput(msg)
}

func (m *Model) updateInput(msg tea.Msg) tea.Cmd {
	before := m.input.Value()
	var cmd tea.Cmd
	m.input, cmd = m.input.Update(msg)
	if m.input.Value() != before && !strings.HasPrefix(m.input.Value(), "/") {
		return tea.Batch(cmd, m.typingKey())
	}
	return cmd
}

// submit sends the input (or runs a /command).
func (m *Model) submit() tea.Cmd {
	text := strings.TrimRight(m.input.Value(), " \n")
	if strings.TrimSpace(text) == "" {
		return nil
	}
	if strings.HasPrefix(text, "/") && !strings.HasPrefix(text, "//") {
		cmd, err := m.command(text)
		if err != nil {
			m.setFlash(err.Error(), true)
			return nil
		}
		m.input.Reset()
		return cmd
	}
	text = strings.TrimPrefix(text, "/") // "//x" sends "/x"
	if !m.inputAllowed() {
		m.setFlash("sending is blocked: "+m.blockedReason(), true)
		return nil
	}
	if len(text) > protocol.MaxTextLen {
		m.setFlash(fmt.Sprintf("message too long: %d bytes (the limit is %d)", len(text), protocol.MaxTextLen), true)
		return nil
	}
	var quote *client.Quote
	if r := m.replyTo; r != nil {
		qt := messageText(r)
		if len(qt) > maxQuote {
			qt = strings.ToValidUTF8(qt[:maxQuote], "")
		}
		quote = &client.Quote{ID: r.ID, Author: r.Sender, Text: qt}
	}
	m.replyTo = nil
	m.input.Reset()
	m.chat.scroll = 0
	// The message itself ends "typing" at the peers.
	m.typingConv, m.typingSentAt = "", time.Time{}
	return m.send(m.chat.conv, text, quote)
}

func (m *Model) blockedReason() string {
	if ch := m.changedMembers(); len(ch) > 0 {
		return strings.Join(ch, ", ") + "'s key changed: " + m.keys.First(ActAccept) + " accepts it"
	}
	if m.chat.conv.IsGroup() && m.chat.group != nil && !m.chat.group.Active {
		return "you are no longer a member of this group"
	}
	return "no conversation is open"
}

// command runs a /command typed in the input.
func (m *Model) command(line string) (tea.Cmd, error) {
	f := strings.Fields(line)
	name, args := f[0], f[1:]
	rest := strings.TrimSpace(strings.TrimPrefix(line, name))
	needGroup := func() error {
		if !m.chat.conv.IsGroup() {
			return fmt.Errorf("%s works in a group conversation", name)
		}
		return nil
	}
	switch name {
	case "/new", "/chat":
		if len(args) != 1 {
			return nil, fmt.Errorf("usage: /new NAME")
		}
		return m.startChat(args[0])
	case "/group":
		if len(args) < 2 {
			return nil, fmt.Errorf("usage: /group NAME MEMBER…")
		}
		return m.createGroup(args[0], args[1:]), nil
	case "/add", "/remove":
		if err := needGroup(); err != nil {
			return nil, err
		}
		if len(args) == 0 {
			return nil, fmt.Errorf("usage: %s NAME…", name)
		}
		return m.changeMembers(name == "/add", args), nil
	case "/leave":
		if err := needGroup(); err != nil {
			return nil, err
		}
		return m.leaveGroup(), nil
	case "/rename":
		if err := needGroup(); err != nil {
			return nil, err
		}
		if rest == "" {
			return nil, fmt.Errorf("usage: /rename NAME")
		}
		return m.renameGroup(rest), nil
	case "/file":
		if rest == "" {
			return nil, fmt.Errorf("usage: /file PATH")
		}
		return m.sendFile(rest, ""), nil
	case "/search":
		cmd := m.openSearch(m.chat.conv)
		m.dialog.(*searchDialog).setQuery(m, rest)
		return tea.Batch(cmd, m.dialog.(*searchDialog).run(m)), nil
	case "/mute", "/unmute":
		return m.toggleMute(), nil
	case "/safety", "/verify":
		return m.openSafety(rest), nil
	case "/trust", "/accept":
		return m.acceptIdentity(), nil
	case "/help":
		m.dialog = newHelpDialog(m)
		return nil, nil
	case "/quit":
		return m.quit(), nil
	}
	return nil, fmt.Errorf("unknown command %s (see %s for the list; start with // to send a slash)", name, m.keys.First(ActHelp))
}

// ---- actions ----

// startChat opens the 1-1 conversation with name (it appears in the list
// with its first message).
func (m *Model) startChat(name string) (tea.Cmd, error) {
	n, err := protocol.NormalizeAccountName(strings.TrimSpace(strings.TrimPrefix(name, "@")))
	if err != nil {
		return nil, err
	}
	if n == m.me {
		return nil, fmt.Errorf("that is you")
	}
	cmd := m.openConv(client.Direct(n), "")
	return tea.Batch(cmd, m.setFocus(paneInput)), nil
}

func (m *Model) changeMembers(add bool, names []string) tea.Cmd {
	gid, _ := m.chat.conv.Group()
	if add {
		return m.do("added "+strings.Join(names, ", "), "", func(ctx context.Context, c *client.Client) error {
			return c.AddMembers(ctx, gid, names...)
		})
	}
	return m.do("removed "+strings.Join(names, ", "), "", func(ctx context.Context, c *client.Client) error {
		return c.RemoveMembers(ctx, gid, names...)
	})
}

func (m *Model) leaveGroup() tea.Cmd {
	gid, _ := m.chat.conv.Group()
	return m.do("you left "+m.chat.name, "", func(ctx context.Context, c *client.Client) error {
		return c.LeaveGroup(ctx, gid)
	})
}

func (m *Model) renameGroup(name string) tea.Cmd {
	gid, _ := m.chat.conv.Group()
	return m.do("group renamed to "+name, "", func(ctx context.Context, c *client.Client) error {
		return c.RenameGroup(ctx, gid, name)
	})
}

func (m *Model) toggleMute() tea.Cmd {
	conv := m.chat.conv
	if m.focus == paneList {
		if items := m.listItems(); m.convSel < len(items) {
			conv = items[m.convSel].ID
		}
	}
	if conv == "" {
		return nil
	}
	c, _ := m.convByID(conv)
	muted := !c.Muted
	for i := range m.convs {
		if m.convs[i].ID == conv {
			m.convs[i].Muted = muted
		}
	}
	what := "unmuted " + m.convName(conv)
	if muted {
		what = "muted " + m.convName(conv)
	}
	return m.do(what, "", func(ctx context.Context, c *client.Client) error {
		return c.SetMuted(ctx, conv, muted)
	})
}

// acceptIdentity accepts the changed identity keys of the open
// conversation's members.
func (m *Model) acceptIdentity() tea.Cmd {
	names := m.changedMembers()
	if len(names) == 0 {
		m.setFlash("no identity change to accept here", false)
		return nil
	}
	return m.do("accepted the new identity key of "+strings.Join(names, ", "), "", func(ctx context.Context, c *client.Client) error {
		for _, n := range names {
			if err := c.Trust(ctx, n); err != nil {
				return err
			}
		}
		return nil
	})
}

func (m *Model) openSafety(name string) tea.Cmd {
	if name == "" {
		if p := m.chat.conv.Peer(); p != "" {
			name = p
		} else if ch := m.changedMembers(); len(ch) > 0 {
			name = ch[0]
		} else if sel := m.selectedMessage(); sel != nil && sel.Sender != m.me {
			name = sel.Sender
		} else if peers := m.peersOfChat(); len(peers) > 0 {
			name = peers[0]
		}
	}
	if name == "" {
		m.setFlash("open a conversation first", true)
		return nil
	}
	d := &safetyDialog{name: name}
	if g := m.chat.group; g != nil {
		d.members = m.peersOfChat()
	}
	m.dialog = d
	return m.loadSafety(name)
}

func (m *Model) openSearch(conv client.ConvID) tea.Cmd {
	d := newSearchDialog(m, conv)
	m.dialog = d
	return d.input.Focus()
}

// ---- mouse ----

func (m *Model) onMouse(msg tea.MouseMsg) tea.Cmd {
	if m.reg != nil {
		return nil
	}
	mouse := msg.Mouse()
	lw, _ := m.paneWidths()
	if m.dialog != nil {
		if w, ok := msg.(tea.MouseWheelMsg); ok {
			if s, ok := m.dialog.(scroller); ok {
				s.scroll(w.Button == tea.MouseWheelUp)
			}
		}
		return nil
	}
	inList := lw > 0 && mouse.X < lw || lw == 0 && m.focus == paneList
	switch msg := msg.(type) {
	case tea.MouseWheelMsg:
		up := msg.Button == tea.MouseWheelUp
		if inList {
			if up {
				m.convSel--
			} else {
				m.convSel++
			}
			m.clampList()
			return nil
		}
		if up {
			return m.scrollChat(3)
		}
		return m.scrollChat(-3)
	case tea.MouseClickMsg:
		if msg.Button != tea.MouseLeft || mouse.Y >= m.height-1 {
			return nil
		}
		if inList {
			i := m.convOff + mouse.Y/2
			if items := m.listItems(); i < len(items) {
				m.convSel = i
				cmd := m.openConv(items[i].ID, "")
				return tea.Batch(cmd, m.setFocus(paneChat))
			}
			return nil
		}
		top, rows := m.messageArea()
		if mouse.Y >= top && mouse.Y < top+rows {
			_, owners := m.chatLines(m.chatWidth(), rows)
			if y := mouse.Y - top; y < len(owners) && owners[y] >= 0 {
				m.chat.selKey = msgKey(&m.chat.msgs[owners[y]])
				return m.setFocus(paneChat)
			}
			return m.setFocus(paneChat)
		}
		if mouse.Y > top+rows {
			return m.setFocus(paneInput)
		}
	}
	return nil
}
