package tui

import (
	"fmt"
	"strings"
	"time"

	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/hushchat/hush/client"
)

// Time and text formatting shared by the views.

func sameDay(a, b time.Time) bool {
	ay, am, ad := a.Date()
	by, bm, bd := b.Date()
	return ay == by && am == bm && ad == bd
}

func clock(t time.Time) string { return t.Local().Format("15:04") }

// dayLabel names a day for the separators between days.
func dayLabel(t, now time.Time) string {
	t, now = t.Local(), now.Local()
	switch {
	case sameDay(t, now):
		return "Today"
	case sameDay(t, now.AddDate(0, 0, -1)):
		return "Yesterday"
	case t.Year() == now.Year():
		return t.Format("Mon 2 Jan")
	}
	return t.Format("Mon 2 Jan 2006")
}

// listTime is the short time in the conversation list.
func listTime(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	t, now = t.Local(), now.Local()
	switch {
	case sameDay(t, now):
		return t.Format("15:04")
	case now.Sub(t) < 6*24*time.Hour && t.Before(now):
		return t.Format("Mon")
	case t.Year() == now.Year():
		return t.Format("2 Jan")
	}
	return t.Format("Jan 06")
}

// lastSeen describes a contact's presence for the conversation header.
func lastSeen(p client.PresenceEvent, now time.Time) string {
	switch {
	case p.Online:
		return "online"
	case p.Hidden || p.LastSeen.IsZero():
		return ""
	}
	t := p.LastSeen.Local()
	now = now.Local()
	switch {
	case sameDay(t, now):
		return "last seen today at " + t.Format("15:04")
	case sameDay(t, now.AddDate(0, 0, -1)):
		return "last seen yesterday at " + t.Format("15:04")
	case t.Year() == now.Year():
		return "last seen " + t.Format("2 Jan") + " at " + t.Format("15:04")
	}
	return "last seen " + t.Format("2 Jan 2006")
}

// Tick marks of outgoing messages.
const (
	tickPending   = "◷"
	tickSent      = "✓"
	tickDelivered = "✓✓"
	tickFailed    = "✗"
)

func (m *Model) tick(s client.Status) string {
	switch s {
	case client.StatusPending:
		return m.st.tick.Render(tickPending)
	case client.StatusSent:
		return m.st.tick.Render(tickSent)
	case client.StatusDelivered:
		return m.st.tick.Render(tickDelivered)
	case client.StatusRead:
		return m.st.read.Render(tickDelivered)
	case client.StatusFailed:
		return m.st.err.Render(tickFailed)
	}
	return " "
}

func statusWord(s client.Status) string {
	switch s {
	case client.StatusPending:
		return tickPending + " waiting to send"
	case client.StatusSent:
		return tickSent + " sent"
	case client.StatusDelivered:
		return tickDelivered + " delivered"
	case client.StatusRead:
		return tickDelivered + " read"
	case client.StatusFailed:
		return tickFailed + " failed"
	}
	return s.String()
}

// fit cuts s to w cells and pads it to exactly w.
func fit(s string, w int) string {
	if w <= 0 {
		return ""
	}
	if lipgloss.Width(s) > w {
		s = ansi.Truncate(s, w, "…")
	}
	if pad := w - lipgloss.Width(s); pad > 0 {
		s += strings.Repeat(" ", pad)
	}
	return s
}

// wrap word-wraps plain text to width (hard-breaking long words) and
// returns its lines.
func wrap(s string, width int) []string {
	if width < 1 {
		width = 1
	}
	var out []string
	for _, para := range strings.Split(s, "\n") {
		w := ansi.Wrap(para, width, " -")
		out = append(out, strings.Split(w, "\n")...)
	}
	for i, l := range out {
		out[i] = strings.TrimRight(l, " ")
	}
	return out
}

// oneLine flattens text for previews.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return s
}

func humanSize(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// messageText is a message's text for previews and quotes.
func messageText(msg *client.Message) string {
	switch msg.Kind {
	case client.KindUndecryptable:
		return "⚠ message could not be decrypted"
	case client.KindAttachment:
		name := "file"
		if msg.Attachment != nil {
			if msg.Attachment.FileName != "" {
				name = msg.Attachment.FileName
			}
			if msg.Attachment.Caption != "" {
				return "[" + name + "] " + msg.Attachment.Caption
			}
		}
		return "[" + name + "]"
	}
	return msg.Text
}
