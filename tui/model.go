package tui

import (
	"context"
	"slices"
	"strings"
	"time"

	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/textarea"
	tea "charm.land/bubbletea/v2"

	"github.com/hushchat/hush/client"
)

// pane is where the keyboard goes.
type pane int

const (
	paneList pane = iota
	paneChat
	paneInput
)

const (
	// pageSize is how many messages one History call loads: enough for
	// a tall terminal, small enough to start fast with a long history.
	pageSize = 100
	// typingIdle: stop "typing" after this long without a keystroke.
	typingIdle = 5 * time.Second
	// typingRefresh: repeat "typing" this often while typing goes on.
	typingRefresh = 4 * time.Second
	// typingShown: show a contact as typing this long after its last
	// "typing" unless it says it stopped.
	typingShown = 7 * time.Second
	// flashFor: how long a status message stays.
	flashFor = 6 * time.Second
	// callTimeout bounds one client call made by the UI.
	callTimeout = 30 * time.Second
	// maxQuote bounds the quoted text carried in a reply.
	maxQuote = 200
)

// Model is the root Bubble Tea model: the conversation list, the open
// conversation and the input, plus at most one dialog over them.
type Model struct {
	ctx    context.Context
	c      *client.Client
	keys   KeyMap
	st     styles
	theme  Theme
	cfg    Config
	notify []string
	now    func() time.Time
	events <-chan client.Event

	width, height int

	me         string
	registered bool
	reg        *registerForm

	state    client.ConnState
	stateErr string
	retryAt  time.Time

	focus       pane
	termFocused bool

	convs        []client.Conversation
	convSel      int
	convOff      int
	convsLoading bool
	convsDirty   bool
	contacts     map[string]client.Contact
	presence     map[string]client.PresenceEvent
	// presenceAsked: peers whose last known presence was read once
	// (later changes arrive as events).
	presenceAsked map[string]bool
	typing        map[client.ConvID]map[string]time.Time

	chat    chatState
	blocks  map[string][]string // rendered messages (see renderMessage)
	input   textarea.Model
	replyTo *client.Message

	typingConv   client.ConvID
	typingSentAt time.Time
	lastKeyAt    time.Time

	dialog dialog

	transfers    []*transfer
	nextTransfer int

	flash    string
	flashErr bool
	flashAt  time.Time
	quitting bool
}

// chatState is the open conversation.
type chatState struct {
	conv         client.ConvID
	name         string
	group        *client.Group
	msgs         []client.Message // oldest first
	hasOlder     bool
	loadingOlder bool
	loaded       bool
	selKey       string // selected message ("" none)
	scroll       int    // lines scrolled up from the newest
}

func msgKey(m *client.Message) string { return m.Sender + "/" + m.ID.String() }

// newModel builds the model; Run and the tests use it.
func newModel(ctx context.Context, c *client.Client, cfg Config, opts Options) (*Model, error) {
	km := DefaultKeyMap()
	if err := applyKeys(&km, cfg.Keys); err != nil {
		return nil, err
	}
	theme, err := buildTheme(cfg.Colors)
	if err != nil {
		return nil, err
	}
	m := &Model{
		ctx:           ctx,
		c:             c,
		keys:          km,
		st:            newStyles(theme),
		theme:         theme,
		cfg:           cfg,
		notify:        cfg.NotifyCommand,
		now:           time.Now,
		width:         80,
		height:        24,
		termFocused:   true,
		contacts:      map[string]client.Contact{},
		presence:      map[string]client.PresenceEvent{},
		presenceAsked: map[string]bool{},
		blocks:        map[string][]string{},
		typing:        map[client.ConvID]map[string]time.Time{},
	}
	if len(opts.NotifyCommand) > 0 {
		m.notify = opts.NotifyCommand
	}
	m.input = newInput(km)
	if a, ok := c.Account(); ok {
		m.me, m.registered = a.Name, true
	} else {
		server := opts.ServerURL
		if server == "" {
			server = cfg.ServerURL
		}
		m.reg = newRegisterForm(server)
	}
	m.state, m.stateErr = c.State()
	m.layout()
	return m, nil
}

func newInput(km KeyMap) textarea.Model {
	ta := textarea.New()
	ta.ShowLineNumbers = false
	ta.Prompt = "› "
	ta.Placeholder = "Write a message…"
	ta.CharLimit = 0
	ta.DynamicHeight = true
	ta.MinHeight = 1
	ta.MaxHeight = 5
	ta.MaxContentHeight = 0
	ta.KeyMap.InsertNewline = key.NewBinding(key.WithKeys(km.Keys(ActNewline)...))
	ta.SetHeight(1)
	return ta
}

// Init starts the event loop, the first loads and the clock.
func (m *Model) Init() tea.Cmd {
	m.events = m.c.Events()
	cmds := []tea.Cmd{waitEvent(m.events), tickCmd()}
	if m.registered {
		cmds = append(cmds, m.loadConvs(), m.loadContacts())
	} else {
		cmds = append(cmds, m.reg.focusCmd())
	}
	return tea.Batch(cmds...)
}

// Messages internal to the model.
type (
	eventMsg        struct{ ev client.Event }
	eventsClosedMsg struct{}
	tickMsg         time.Time
	convsMsg        struct {
		convs []client.Conversation
		err   error
	}
	contactsMsg struct {
		contacts []client.Contact
		err      error
	}
	historyMsg struct {
		conv    client.ConvID
		msgs    []client.Message
		older   bool // a page before the loaded ones
		replace bool // replaces what is loaded (open, jump)
		hasMore bool
		selKey  string
		err     error
	}
	groupMsg struct {
		conv client.ConvID
		g    *client.Group
	}
	msgUpdateMsg struct {
		msgs []client.Message
	}
	sentMsg struct {
		conv client.ConvID
		id   client.MessageID
		text string
		err  error
	}
	doneMsg struct {
		what   string // shown on success ("" for nothing)
		err    error
		reload bool // reload conversations and contacts
		open   client.ConvID
	}
	registeredMsg struct{ err error }
	presenceMsg   struct {
		name string
		p    client.PresenceEvent
		ok   bool
	}
	notifyDoneMsg struct{ err error }
)

// Update handles one message.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	cmd := m.update(msg)
	return m, cmd
}

func (m *Model) update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.layout()
		return nil
	case tea.FocusMsg:
		m.termFocused = true
		m.c.SetActive(true)
		return m.maybeMarkRead()
	case tea.BlurMsg:
		m.termFocused = false
		m.c.SetActive(false)
		return nil
	case eventMsg:
		cmd := m.handleEvent(msg.ev)
		return tea.Batch(cmd, waitEvent(m.events))
	case eventsClosedMsg:
		return nil
	case tickMsg:
		return tea.Batch(m.onTick(time.Time(msg)), tickCmd())
	case convsMsg:
		return m.onConvs(msg)
	case contactsMsg:
		if msg.err == nil {
			m.contacts = map[string]client.Contact{}
			for _, c := range msg.contacts {
				m.contacts[c.Name] = c
			}
		}
		return nil
	case historyMsg:
		return m.onHistory(msg)
	case groupMsg:
		if msg.conv == m.chat.conv {
			m.chat.group = msg.g
			if msg.g != nil {
				m.chat.name = msg.g.Name
			}
		}
		return nil
	case msgUpdateMsg:
		for _, u := range msg.msgs {
			m.mergeMessages([]client.Message{u})
		}
		return nil
	case sentMsg:
		return m.onSent(msg)
	case doneMsg:
		return m.onDone(msg)
	case registeredMsg:
		return m.onRegistered(msg)
	case presenceMsg:
		if msg.ok {
			m.presence[msg.name] = msg.p
		}
		return nil
	case progressMsg:
		return m.onProgress(msg)
	case transferDoneMsg:
		return m.onTransferDone(msg)
	case notifyDoneMsg:
		if msg.err != nil {
			m.setFlash("notify command: "+msg.err.Error(), true)
		}
		return nil
	case searchResultsMsg:
		if d, ok := m.dialog.(*searchDialog); ok {
			d.onResults(msg)
		}
		return nil
	case safetyMsg:
		if d, ok := m.dialog.(*safetyDialog); ok && d.name == msg.name {
			d.numbers, d.err = msg.numbers, msg.err
		}
		return nil
	case recipientsMsg:
		if d, ok := m.dialog.(*infoDialog); ok && d.msg.ID == msg.id {
			d.recipients, d.err = msg.recipients, msg.err
		}
		return nil
	case tea.PasteMsg:
		if m.reg != nil {
			return m.reg.update(m, msg)
		}
		if m.dialog != nil {
			return m.dialog.update(m, msg)
		}
		if m.focus != paneInput && m.chat.conv != "" && m.inputAllowed() {
			m.setFocus(paneInput)
		}
		if m.focus == paneInput {
			return m.updateInput(msg)
		}
		return nil
	case tea.MouseMsg:
		return m.onMouse(msg)
	case tea.KeyPressMsg:
		return m.onKey(msg)
	}
	// Everything else (cursor blinks) goes to the focused text field.
	if m.reg != nil {
		return m.reg.update(m, msg)
	}
	if m.dialog != nil {
		return m.dialog.update(m, msg)
	}
	var cmd tea.Cmd
	m.input, cmd = m.input.Update(msg)
	return cmd
}

func (m *Model) setFlash(s string, isErr bool) {
	m.flash, m.flashErr, m.flashAt = s, isErr, m.now()
}

// layout sizes the components for the window.
func (m *Model) layout() {
	_, chatW := m.paneWidths()
	m.input.SetWidth(max(chatW, 10))
	m.input.MaxHeight = max(1, min(5, (m.height-6)/3))
	if m.reg != nil {
		m.reg.setWidth(m.width)
	}
	m.clampList()
}

// paneWidths returns the list's and the conversation's widths (the list
// is 0 wide when the window is too narrow for both: then one pane shows
// at a time).
func (m *Model) paneWidths() (int, int) {
	if m.width < 56 {
		return 0, m.width
	}
	lw := min(max(m.width/3, 20), 32)
	return lw, m.width - lw - 1
}

func (m *Model) setFocus(p pane) tea.Cmd {
	if p == paneInput && (m.chat.conv == "" || !m.inputAllowed()) {
		p = paneChat
		if m.chat.conv == "" {
			p = paneList
		}
	}
	prev := m.focus
	m.focus = p
	if p == paneInput {
		return m.input.Focus()
	}
	m.input.Blur()
	if p == paneChat && m.chat.selKey == "" && len(m.chat.msgs) > 0 {
		m.chat.selKey = msgKey(&m.chat.msgs[len(m.chat.msgs)-1])
	}
	if prev == paneInput {
		return m.stopTyping()
	}
	return nil
}

// ---- events ----

func (m *Model) handleEvent(ev client.Event) tea.Cmd {
	switch ev := ev.(type) {
	case *client.MessageEvent:
		msg := ev.Message
		var cmds []tea.Cmd
		if msg.Conv == m.chat.conv {
			m.mergeMessages([]client.Message{msg})
			cmds = append(cmds, m.maybeMarkRead())
		}
		if !msg.Outgoing {
			if t := m.typing[msg.Conv]; t != nil {
				delete(t, msg.Sender)
			}
			cmds = append(cmds, m.notifyFor(&msg))
		}
		cmds = append(cmds, m.reloadConvs())
		return tea.Batch(cmds...)
	case *client.UndecryptableEvent:
		msg := ev.Message
		var cmds []tea.Cmd
		if msg.Conv == m.chat.conv {
			m.mergeMessages([]client.Message{msg})
			cmds = append(cmds, m.maybeMarkRead())
		}
		cmds = append(cmds, m.notifyFor(&msg), m.reloadConvs())
		return tea.Batch(cmds...)
	case *client.SentEvent:
		if ev.Conv == m.chat.conv {
			for i := range m.chat.msgs {
				mm := &m.chat.msgs[i]
				if !mm.Outgoing || mm.ID != ev.ID {
					continue
				}
				if ev.Status > mm.Status || ev.Status == client.StatusFailed {
					mm.Status, mm.Error = ev.Status, ev.Error
				}
			}
		}
		return m.reloadConvs()
	case *client.ReceiptEvent:
		var cmds []tea.Cmd
		if ev.Conv == m.chat.conv {
			cmds = append(cmds, m.refreshMessages(ev.MessageIDs))
		}
		if d, ok := m.dialog.(*infoDialog); ok && slices.Contains(ev.MessageIDs, d.msg.ID) {
			cmds = append(cmds, m.loadRecipients(d.msg.ID))
		}
		return tea.Batch(append(cmds, m.reloadConvs())...)
	case *client.TypingEvent:
		t := m.typing[ev.Conv]
		if t == nil {
			t = map[string]time.Time{}
			m.typing[ev.Conv] = t
		}
		if ev.Started {
			t[ev.From] = m.now().Add(typingShown)
		} else {
			delete(t, ev.From)
		}
		return nil
	case *client.PresenceEvent:
		m.presence[ev.Account] = *ev
		return nil
	case *client.IdentityChangedEvent:
		if !ev.Accepted {
			m.setFlash(ev.Account+"'s identity key changed: compare safety numbers ("+m.keys.First(ActSafety)+")", true)
		}
		return m.loadContacts()
	case *client.GroupUpdateEvent:
		cmds := []tea.Cmd{m.reloadConvs()}
		if conv := client.GroupConv(ev.Group.ID); conv == m.chat.conv {
			g := ev.Group
			m.chat.group, m.chat.name = &g, g.Name
			cmds = append(cmds, m.loadNewest(conv))
		}
		return tea.Batch(cmds...)
	case *client.ConnectionStateEvent:
		m.state, m.stateErr = ev.State, ev.Err
		m.retryAt = time.Time{}
		if ev.State == client.Reconnecting {
			m.retryAt = m.now().Add(ev.RetryIn)
		}
		if ev.State == client.Connected {
			return m.loadContacts()
		}
		return nil
	}
	return nil
}

// mergeMessages adds or updates messages of the open conversation,
// keeping conversation order.
func (m *Model) mergeMessages(in []client.Message) {
	ch := &m.chat
	for _, msg := range in {
		if msg.Conv != ch.conv {
			continue
		}
		k := msgKey(&msg)
		i := slices.IndexFunc(ch.msgs, func(x client.Message) bool { return msgKey(&x) == k })
		if i >= 0 {
			ch.msgs[i] = msg
			continue
		}
		if ch.hasOlder && len(ch.msgs) > 0 && msg.Seq < ch.msgs[0].Seq {
			continue // before the loaded window: paging up loads it
		}
		j, _ := slices.BinarySearchFunc(ch.msgs, msg.Seq, func(x client.Message, s int64) int {
			switch {
			case x.Seq < s:
				return -1
			case x.Seq > s:
				return 1
			}
			return 0
		})
		ch.msgs = slices.Insert(ch.msgs, j, msg)
		if ch.scroll > 0 && j == len(ch.msgs)-1 {
			// Keep the view still while reading older messages.
			ch.scroll += len(m.renderMessage(len(ch.msgs)-1, m.chatWidth(), false))
		}
	}
}

func (m *Model) onConvs(msg convsMsg) tea.Cmd {
	m.convsLoading = false
	if msg.err != nil {
		m.setFlash("load conversations: "+msg.err.Error(), true)
		return nil
	}
	var selConv client.ConvID
	if items := m.listItems(); m.convSel < len(items) {
		selConv = items[m.convSel].ID
	}
	m.convs = msg.convs
	if selConv != "" {
		if i := slices.IndexFunc(m.listItems(), func(c client.Conversation) bool { return c.ID == selConv }); i >= 0 {
			m.convSel = i
		}
	}
	m.clampList()
	var cmds []tea.Cmd
	if m.convsDirty {
		m.convsDirty = false
		cmds = append(cmds, m.reloadConvs())
	}
	// Subscribe to presence of peers we did not know yet.
	for _, c := range m.convs {
		if p := c.ID.Peer(); p != "" && !m.presenceAsked[p] {
			m.presenceAsked[p] = true
			cmds = append(cmds, m.loadPresence(p))
		}
	}
	return tea.Batch(cmds...)
}

func (m *Model) onHistory(msg historyMsg) tea.Cmd {
	if msg.conv != m.chat.conv {
		return nil
	}
	ch := &m.chat
	if msg.err != nil {
		ch.loadingOlder = false
		m.setFlash("load history: "+msg.err.Error(), true)
		return nil
	}
	switch {
	case msg.replace:
		ch.msgs, ch.hasOlder, ch.loaded = msg.msgs, msg.hasMore, true
		ch.scroll = 0
		if msg.selKey != "" {
			ch.selKey = msg.selKey
			m.scrollToSelection()
		}
		return m.maybeMarkRead()
	case msg.older:
		ch.loadingOlder = false
		ch.hasOlder = msg.hasMore
		// Events may have delivered some of these already.
		have := map[string]bool{}
		for i := range ch.msgs {
			have[msgKey(&ch.msgs[i])] = true
		}
		var older []client.Message
		for _, x := range msg.msgs {
			if !have[msgKey(&x)] {
				older = append(older, x)
			}
		}
		ch.msgs = append(older, ch.msgs...)
		return m.maybeLoadOlder()
	default:
		m.mergeMessages(msg.msgs)
	}
	return nil
}

func (m *Model) onSent(msg sentMsg) tea.Cmd {
	if msg.err != nil {
		if msg.conv == m.chat.conv && m.input.Value() == "" {
			m.input.SetValue(msg.text) // nothing is lost
		}
		m.setFlash("not sent: "+msg.err.Error(), true)
		return m.loadContacts()
	}
	if msg.conv == m.chat.conv {
		return tea.Batch(m.refreshMessages([]client.MessageID{msg.id}), m.reloadConvs())
	}
	return m.reloadConvs()
}

func (m *Model) onDone(msg doneMsg) tea.Cmd {
	if msg.err != nil {
		m.setFlash(msg.err.Error(), true)
	} else if msg.what != "" {
		m.setFlash(msg.what, false)
	}
	var cmds []tea.Cmd
	if msg.reload {
		cmds = append(cmds, m.reloadConvs(), m.loadContacts())
		if m.chat.conv.IsGroup() {
			cmds = append(cmds, m.loadGroup(m.chat.conv))
		}
	}
	if msg.err == nil && msg.open != "" {
		cmds = append(cmds, m.openConv(msg.open, ""))
	}
	return tea.Batch(cmds...)
}

func (m *Model) onRegistered(msg registeredMsg) tea.Cmd {
	if msg.err != nil {
		m.reg.busy = false
		m.reg.err = msg.err.Error()
		return nil
	}
	a, _ := m.c.Account()
	m.me, m.registered, m.reg = a.Name, true, nil
	m.setFlash("registered as "+a.Name+": press "+m.keys.First(ActNewChat)+" to start a chat", false)
	m.layout()
	return tea.Batch(m.loadConvs(), m.loadContacts())
}

func (m *Model) onTick(now time.Time) tea.Cmd {
	for conv, t := range m.typing {
		for who, until := range t {
			if m.now().After(until) {
				delete(t, who)
			}
		}
		if len(t) == 0 {
			delete(m.typing, conv)
		}
	}
	if m.flash != "" && m.now().Sub(m.flashAt) > flashFor {
		m.flash = ""
	}
	if !m.typingSentAt.IsZero() && m.now().Sub(m.lastKeyAt) > typingIdle {
		return m.stopTyping()
	}
	return nil
}

// ---- helpers over the open conversation ----

// openConv opens conv (selecting message selKey when set).
func (m *Model) openConv(conv client.ConvID, selKey string) tea.Cmd {
	var cmds []tea.Cmd
	if m.chat.conv != conv {
		cmds = append(cmds, m.stopTyping())
		m.chat = chatState{conv: conv, name: m.convName(conv)}
		m.replyTo = nil
		m.input.Reset()
	}
	if i := slices.IndexFunc(m.listItems(), func(c client.Conversation) bool { return c.ID == conv }); i >= 0 {
		m.convSel = i
		m.clampList()
	}
	cmds = append(cmds, m.loadHistory(conv, selKey))
	if conv.IsGroup() {
		cmds = append(cmds, m.loadGroup(conv))
	} else if p := conv.Peer(); p != "" {
		cmds = append(cmds, m.loadPresence(p))
	}
	return tea.Batch(cmds...)
}

func (m *Model) convName(conv client.ConvID) string {
	for _, c := range m.convs {
		if c.ID == conv && c.Name != "" {
			return c.Name
		}
	}
	if p := conv.Peer(); p != "" {
		return p
	}
	return "group"
}

func (m *Model) convByID(id client.ConvID) (client.Conversation, bool) {
	for _, c := range m.convs {
		if c.ID == id {
			return c, true
		}
	}
	return client.Conversation{}, false
}

// listItems is the conversation list: the store's, plus the open
// conversation when it has no message yet (a new chat).
func (m *Model) listItems() []client.Conversation {
	if m.chat.conv == "" {
		return m.convs
	}
	if _, ok := m.convByID(m.chat.conv); ok {
		return m.convs
	}
	return append([]client.Conversation{{ID: m.chat.conv, Name: m.chat.name}}, m.convs...)
}

// changedMembers lists the accounts of the open conversation whose
// identity changed and was not accepted.
func (m *Model) changedMembers() []string {
	var out []string
	for _, a := range m.peersOfChat() {
		if c, ok := m.contacts[a]; ok && c.IdentityChanged {
			out = append(out, a)
		}
	}
	return out
}

func (m *Model) peersOfChat() []string {
	if p := m.chat.conv.Peer(); p != "" {
		return []string{p}
	}
	var out []string
	if g := m.chat.group; g != nil {
		for _, mem := range g.Members {
			if mem.Account != m.me {
				out = append(out, mem.Account)
			}
		}
	}
	return out
}

// inputAllowed: the open conversation can be written to.
func (m *Model) inputAllowed() bool {
	if m.chat.conv == "" || len(m.changedMembers()) > 0 {
		return false
	}
	if m.chat.conv.IsGroup() && m.chat.group != nil && !m.chat.group.Active {
		return false
	}
	return true
}

func (m *Model) selectedIndex() int {
	if m.chat.selKey == "" {
		return -1
	}
	return slices.IndexFunc(m.chat.msgs, func(x client.Message) bool { return msgKey(&x) == m.chat.selKey })
}

func (m *Model) selectedMessage() *client.Message {
	if i := m.selectedIndex(); i >= 0 {
		return &m.chat.msgs[i]
	}
	return nil
}

// hasUnread: the open conversation has unread incoming messages.
func (m *Model) hasUnread() bool {
	if c, ok := m.convByID(m.chat.conv); ok && c.Unread > 0 {
		return true
	}
	for i := len(m.chat.msgs) - 1; i >= 0 && i >= len(m.chat.msgs)-pageSize; i-- {
		if x := m.chat.msgs[i]; !x.Outgoing && !x.Read && x.Kind != client.KindGroupUpdate {
			return true
		}
	}
	return false
}

// maybeMarkRead marks the open conversation read when the terminal has
// focus and the window shows it.
func (m *Model) maybeMarkRead() tea.Cmd {
	if m.chat.conv == "" || !m.termFocused || m.dialog != nil || !m.chat.loaded || !m.hasUnread() {
		return nil
	}
	if lw, _ := m.paneWidths(); lw == 0 && m.focus == paneList {
		return nil // the list covers the conversation
	}
	for i := range m.chat.msgs {
		if !m.chat.msgs[i].Outgoing {
			m.chat.msgs[i].Read = true
		}
	}
	for i := range m.convs {
		if m.convs[i].ID == m.chat.conv {
			m.convs[i].Unread = 0
		}
	}
	return m.markRead(m.chat.conv)
}

// typingKey: the input changed; tell the peers we are typing.
func (m *Model) typingKey() tea.Cmd {
	now := m.now()
	m.lastKeyAt = now
	if m.input.Value() == "" {
		return m.stopTyping()
	}
	if m.typingConv == m.chat.conv && now.Sub(m.typingSentAt) < typingRefresh {
		return nil
	}
	var stop tea.Cmd
	if m.typingConv != "" && m.typingConv != m.chat.conv {
		stop = m.stopTyping()
	}
	m.typingConv, m.typingSentAt = m.chat.conv, now
	return tea.Batch(stop, m.sendTyping(m.chat.conv, true))
}

func (m *Model) stopTyping() tea.Cmd {
	if m.typingSentAt.IsZero() {
		return nil
	}
	conv := m.typingConv
	m.typingConv, m.typingSentAt = "", time.Time{}
	return m.sendTyping(conv, false)
}

// notifyFor rings the bell and runs the notify command for a new message
// in a conversation the user is not looking at.
func (m *Model) notifyFor(msg *client.Message) tea.Cmd {
	if msg.Outgoing || msg.Kind == client.KindGroupUpdate {
		return nil
	}
	if c, ok := m.convByID(msg.Conv); ok && c.Muted {
		return nil
	}
	if msg.Conv == m.chat.conv && m.termFocused {
		return nil
	}
	var cmds []tea.Cmd
	if m.cfg.Bell == nil || *m.cfg.Bell {
		cmds = append(cmds, tea.Raw("\a"))
	}
	if len(m.notify) > 0 {
		cmds = append(cmds, m.runNotify(msg.Sender, m.convName(msg.Conv), oneLine(messageText(msg))))
	}
	return tea.Batch(cmds...)
}

// parseNames splits a member list ("a, b c").
func parseNames(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == ';' })
}
