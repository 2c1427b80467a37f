package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hushchat/hush/client"
)

// The JSON shapes below are the CLI's contract with scripts (docs/cli.md):
// field names never change meaning; new fields may be added, and readers
// must ignore fields and event types they do not know. Times are RFC 3339
// in UTC with milliseconds. Key material (attachment keys, digests, object
// keys, identity keys) is never part of any line.

// timeLayout is RFC 3339 with milliseconds.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// stamp formats t for JSON ("" for the zero time).
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(timeLayout)
}

// localTime formats t for people.
func localTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

type quoteJSON struct {
	ID     string `json:"id"`
	Author string `json:"author"`
	Text   string `json:"text,omitempty"`
}

// attachmentJSON describes a received file. ID is what `hush save` takes.
type attachmentJSON struct {
	ID          string `json:"id"`
	Name        string `json:"name,omitempty"`
	Size        uint64 `json:"size"`
	ContentType string `json:"content_type,omitempty"`
	Width       uint32 `json:"width,omitempty"`
	Height      uint32 `json:"height,omitempty"`
	Caption     string `json:"caption,omitempty"`
}

// messageJSON is a message: a "message" event line, a history line, and
// the last message of a conversation.
type messageJSON struct {
	Type      string          `json:"type"` // "message"
	ID        string          `json:"id"`
	Conv      string          `json:"conv"`
	From      string          `json:"from"`
	Device    uint32          `json:"device"`
	Group     string          `json:"group,omitempty"`
	GroupName string          `json:"group_name,omitempty"`
	Outgoing  bool            `json:"outgoing"`
	Kind      string          `json:"kind"`
	Text      string          `json:"text"`
	Timestamp string          `json:"timestamp"`
	Received  string          `json:"received,omitempty"`
	Quote     *quoteJSON      `json:"quote,omitempty"`
	File      *attachmentJSON `json:"attachment,omitempty"`
	// Status: an outgoing message's state (history only).
	Status string `json:"status,omitempty"`
	// Read: an incoming message was marked read (history only).
	Read *bool `json:"read,omitempty"`
	// Error: why a message failed or could not be decrypted.
	Error string `json:"error,omitempty"`
}

type receiptJSON struct {
	Type      string   `json:"type"` // "receipt"
	Conv      string   `json:"conv"`
	From      string   `json:"from"`
	Device    uint32   `json:"device"`
	Group     string   `json:"group,omitempty"`
	Status    string   `json:"status"` // delivered, read
	IDs       []string `json:"ids"`
	Timestamp string   `json:"timestamp"`
}

type typingJSON struct {
	Type      string `json:"type"` // "typing"
	Conv      string `json:"conv"`
	From      string `json:"from"`
	Device    uint32 `json:"device"`
	Group     string `json:"group,omitempty"`
	Started   bool   `json:"started"`
	Timestamp string `json:"timestamp"`
}

type presenceJSON struct {
	Type      string `json:"type"` // "presence"
	From      string `json:"from"`
	Online    bool   `json:"online"`
	LastSeen  string `json:"last_seen,omitempty"`
	Hidden    bool   `json:"hidden"`
	Timestamp string `json:"timestamp"`
}

type identityJSON struct {
	Type      string `json:"type"` // "identity_changed"
	From      string `json:"from"`
	Device    uint32 `json:"device"`
	Accepted  bool   `json:"accepted"`
	Timestamp string `json:"timestamp"`
}

type undecryptableJSON struct {
	Type      string `json:"type"` // "undecryptable"
	ID        string `json:"id"`
	Conv      string `json:"conv"`
	From      string `json:"from"`
	Device    uint32 `json:"device"`
	Group     string `json:"group,omitempty"`
	Timestamp string `json:"timestamp"`
	Error     string `json:"error"`
}

type memberJSON struct {
	Account string `json:"account"`
	Admin   bool   `json:"admin"`
}

type groupUpdateJSON struct {
	Type      string       `json:"type"` // "group_update"
	Group     string       `json:"group"`
	GroupName string       `json:"group_name"`
	From      string       `json:"from"`
	Action    string       `json:"action"`
	Targets   []string     `json:"targets,omitempty"`
	Members   []memberJSON `json:"members"`
	Active    bool         `json:"active"`
	Revision  uint64       `json:"revision"`
	Timestamp string       `json:"timestamp"`
}

type sentJSON struct {
	Type      string `json:"type"` // "sent"
	ID        string `json:"id"`
	Conv      string `json:"conv"`
	Group     string `json:"group,omitempty"`
	Status    string `json:"status"` // sent, failed
	Error     string `json:"error,omitempty"`
	Timestamp string `json:"timestamp"`
}

type connectionJSON struct {
	Type      string `json:"type"` // "connection"
	State     string `json:"state"`
	RetryInMs int64  `json:"retry_in_ms,omitempty"`
	Error     string `json:"error,omitempty"`
	Timestamp string `json:"timestamp"`
}

type groupJSON struct {
	ID       string       `json:"id"`
	Name     string       `json:"name"`
	Revision uint64       `json:"revision"`
	Active   bool         `json:"active"`
	Members  []memberJSON `json:"members"`
	Updated  string       `json:"updated"`
}

func groupGroup(conv client.ConvID) string {
	if id, ok := conv.Group(); ok {
		return id.String()
	}
	return ""
}

func members(ms []client.Member) []memberJSON {
	out := make([]memberJSON, 0, len(ms))
	for _, m := range ms {
		out = append(out, memberJSON{Account: m.Account, Admin: m.Admin})
	}
	return out
}

func toGroupJSON(g *client.Group) groupJSON {
	return groupJSON{ID: g.ID.String(), Name: g.Name, Revision: g.Revision, Active: g.Active, Members: members(g.Members), Updated: stamp(g.Updated)}
}

// groupNames caches group names for one run.
type groupNames struct {
	c     *client.Client
	names map[client.GroupID]string
}

func newGroupNames(c *client.Client) *groupNames {
	return &groupNames{c: c, names: map[client.GroupID]string{}}
}

func (g *groupNames) name(ctx context.Context, id *client.GroupID) string {
	if id == nil {
		return ""
	}
	if n, ok := g.names[*id]; ok {
		return n
	}
	n := ""
	if gr, err := g.c.Group(ctx, *id); err == nil {
		n = gr.Name
	}
	g.names[*id] = n
	return n
}

func (g *groupNames) forget(id client.GroupID) { delete(g.names, id) }

// toMessageJSON maps a message; history adds status and read.
func toMessageJSON(ctx context.Context, gn *groupNames, m *client.Message, history bool) messageJSON {
	out := messageJSON{Type: "message", ID: m.ID.String(), Conv: string(m.Conv), From: m.Sender, Device: m.SenderDevice,
		Outgoing: m.Outgoing, Kind: string(m.Kind), Text: m.Text, Timestamp: stamp(m.SentAt), Received: stamp(m.Received), Error: m.Error}
	if m.Group != nil {
		out.Group, out.GroupName = m.Group.String(), gn.name(ctx, m.Group)
	}
	if m.Quote != nil {
		out.Quote = &quoteJSON{ID: m.Quote.ID.String(), Author: m.Quote.Author, Text: m.Quote.Text}
	}
	if at := m.Attachment; at != nil {
		out.File = &attachmentJSON{ID: m.ID.String(), Name: at.FileName, Size: at.Size, ContentType: at.ContentType,
			Width: at.Width, Height: at.Height, Caption: at.Caption}
		if out.Text == "" {
			out.Text = at.Caption
		}
	}
	if history {
		if m.Outgoing {
			out.Status = m.Status.String()
		} else {
			r := m.Read
			out.Read = &r
		}
	}
	return out
}

// eventJSON maps an event to its line's value (nil: not printed).
func eventJSON(ctx context.Context, gn *groupNames, ev client.Event) any {
	now := stamp(time.Now())
	switch e := ev.(type) {
	case *client.MessageEvent:
		return toMessageJSON(ctx, gn, &e.Message, false)
	case *client.ReceiptEvent:
		ids := make([]string, len(e.MessageIDs))
		for i, id := range e.MessageIDs {
			ids[i] = id.String()
		}
		return receiptJSON{Type: "receipt", Conv: string(e.Conv), From: e.From, Device: e.Device, Group: groupGroup(e.Conv),
			Status: e.Status.String(), IDs: ids, Timestamp: stamp(e.At)}
	case *client.TypingEvent:
		return typingJSON{Type: "typing", Conv: string(e.Conv), From: e.From, Device: e.Device, Group: groupGroup(e.Conv),
			Started: e.Started, Timestamp: stamp(e.At)}
	case *client.PresenceEvent:
		return presenceJSON{Type: "presence", From: e.Account, Online: e.Online, LastSeen: stamp(e.LastSeen), Hidden: e.Hidden, Timestamp: now}
	case *client.IdentityChangedEvent:
		return identityJSON{Type: "identity_changed", From: e.Account, Device: e.Device, Accepted: e.Accepted, Timestamp: stamp(e.At)}
	case *client.UndecryptableEvent:
		m := &e.Message
		return undecryptableJSON{Type: "undecryptable", ID: m.ID.String(), Conv: string(m.Conv), From: m.Sender, Device: m.SenderDevice,
			Group: groupGroup(m.Conv), Timestamp: stamp(m.SentAt), Error: m.Error}
	case *client.GroupUpdateEvent:
		gn.forget(e.Group.ID)
		return groupUpdateJSON{Type: "group_update", Group: e.Group.ID.String(), GroupName: e.Group.Name, From: e.Actor, Action: e.Action,
			Targets: e.Targets, Members: members(e.Group.Members), Active: e.Group.Active, Revision: e.Group.Revision, Timestamp: stamp(e.At)}
	case *client.SentEvent:
		return sentJSON{Type: "sent", ID: e.ID.String(), Conv: string(e.Conv), Group: groupGroup(e.Conv), Status: e.Status.String(),
			Error: e.Error, Timestamp: now}
	case *client.ConnectionStateEvent:
		return connectionJSON{Type: "connection", State: e.State.String(), RetryInMs: e.RetryIn.Milliseconds(), Error: e.Err, Timestamp: now}
	}
	return nil
}

// eventText words an event as one line for people ("" for none).
func eventText(ctx context.Context, gn *groupNames, ev client.Event) string {
	switch e := ev.(type) {
	case *client.MessageEvent:
		return messageText(ctx, gn, &e.Message, false)
	case *client.ReceiptEvent:
		n := len(e.MessageIDs)
		how := "delivered to"
		if e.Status == client.StatusRead {
			how = "read by"
		}
		return fmt.Sprintf("%s %s%s %s: %d message%s", localTime(e.At), where(ctx, gn, e.Conv), how, e.From, n, plural(n))
	case *client.TypingEvent:
		what := "is typing"
		if !e.Started {
			what = "stopped typing"
		}
		return fmt.Sprintf("%s %s%s %s", localTime(e.At), where(ctx, gn, e.Conv), e.From, what)
	case *client.PresenceEvent:
		switch {
		case e.Online:
			return fmt.Sprintf("%s %s is online", localTime(time.Now()), e.Account)
		case !e.LastSeen.IsZero():
			return fmt.Sprintf("%s %s was last seen %s", localTime(time.Now()), e.Account, localTime(e.LastSeen))
		}
		return fmt.Sprintf("%s %s is offline", localTime(time.Now()), e.Account)
	case *client.IdentityChangedEvent:
		if e.Accepted {
			return fmt.Sprintf("%s %s's identity key changed (device %d); accepted because of --identity-policy warn",
				localTime(e.At), e.Account, e.Device)
		}
		return fmt.Sprintf("%s WARNING: %s's identity key changed (device %d). Their messages are held and sending to them is refused until you compare safety numbers ('hush safety %s') and accept the change ('hush trust %s').",
			localTime(e.At), e.Account, e.Device, e.Account, e.Account)
	case *client.UndecryptableEvent:
		m := &e.Message
		return fmt.Sprintf("%s %s%s: [a message that could not be decrypted (%s); the sender was asked to send it again]",
			localTime(m.SentAt), where(ctx, gn, m.Conv), m.Sender, m.Error)
	case *client.GroupUpdateEvent:
		gn.forget(e.Group.ID)
		return fmt.Sprintf("%s [%s] %s", localTime(e.At), e.Group.Name, describeGroupUpdate(e))
	case *client.SentEvent:
		if e.Status == client.StatusFailed {
			return fmt.Sprintf("%s message %s to %s failed: %s", localTime(time.Now()), e.ID, convWords(ctx, gn, e.Conv), e.Error)
		}
		return fmt.Sprintf("%s message %s to %s %s", localTime(time.Now()), e.ID, convWords(ctx, gn, e.Conv), e.Status)
	case *client.ConnectionStateEvent:
		s := fmt.Sprintf("%s connection: %s", localTime(time.Now()), e.State)
		if e.RetryIn > 0 {
			s += fmt.Sprintf(" (retrying in %s)", e.RetryIn.Round(100*time.Millisecond))
		}
		if e.Err != "" {
			s += ": " + e.Err
		}
		return s
	}
	return ""
}

func describeGroupUpdate(e *client.GroupUpdateEvent) string {
	who := strings.Join(e.Targets, ", ")
	switch e.Action {
	case "create":
		return fmt.Sprintf("%s created the group", e.Actor)
	case "add":
		return fmt.Sprintf("%s added %s", e.Actor, who)
	case "remove":
		return fmt.Sprintf("%s removed %s", e.Actor, who)
	case "leave":
		return fmt.Sprintf("%s left", e.Actor)
	case "rename":
		return fmt.Sprintf("%s renamed the group to %q", e.Actor, e.Group.Name)
	}
	return fmt.Sprintf("%s: %s %s", e.Actor, e.Action, who)
}

// where prefixes a group conversation's name: "[team] ".
func where(ctx context.Context, gn *groupNames, conv client.ConvID) string {
	if id, ok := conv.Group(); ok {
		return "[" + gn.name(ctx, &id) + "] "
	}
	return ""
}

// convWords names a conversation for people.
func convWords(ctx context.Context, gn *groupNames, conv client.ConvID) string {
	if id, ok := conv.Group(); ok {
		return "group " + gn.name(ctx, &id)
	}
	return conv.Peer()
}

// messageText is one human line for a message.
func messageText(ctx context.Context, gn *groupNames, m *client.Message, history bool) string {
	var b strings.Builder
	b.WriteString(localTime(m.SentAt))
	b.WriteByte(' ')
	b.WriteString(where(ctx, gn, m.Conv))
	if m.Outgoing && m.Group == nil {
		fmt.Fprintf(&b, "%s → %s: ", m.Sender, m.Conv.Peer())
	} else {
		b.WriteString(m.Sender + ": ")
	}
	if m.Quote != nil {
		fmt.Fprintf(&b, "(reply to %s: %q) ", m.Quote.Author, clipText(m.Quote.Text, 40))
	}
	switch {
	case m.Kind == client.KindUndecryptable:
		fmt.Fprintf(&b, "[could not be decrypted: %s]", m.Error)
	case m.Attachment != nil:
		at := m.Attachment
		fmt.Fprintf(&b, "[file %q, %s, %s; save with 'hush save %s']", at.FileName, humanSize(at.Size), at.ContentType, m.ID)
		if at.Caption != "" {
			b.WriteString(" " + at.Caption)
		}
	default:
		b.WriteString(m.Text)
	}
	if history && m.Outgoing {
		b.WriteString("  (" + m.Status.String())
		if m.Error != "" && m.Status == client.StatusFailed {
			b.WriteString(": " + m.Error)
		}
		b.WriteString(")")
	}
	return b.String()
}

func clipText(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

func humanSize(n uint64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// writeJSON writes v as one line.
func writeJSON(w io.Writer, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

// oneLine makes text from others safe to print on a terminal as one line:
// a line break shows as "↵", other control characters (which could move
// the cursor or recolour the terminal) as "�".
func oneLine(s string) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == '\u2028' || r == '\u2029' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\u2028' || r == '\u2029':
			b.WriteString("↵")
		case r == '\r':
		case r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || (r >= 0x7f && r < 0xa0):
			b.WriteRune('\uFFFD')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// writeLine writes one human line.
func writeLine(w io.Writer, s string) error {
	_, err := io.WriteString(w, oneLine(s)+"\n")
	return err
}
