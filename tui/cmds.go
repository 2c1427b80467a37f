package tui

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/hushchat/hush/client"
)

// Every client call runs in a tea.Cmd (off the UI goroutine) and reports
// back with a message, so the UI never waits on the network or the disk.

func waitEvent(ch <-chan client.Event) tea.Cmd {
	return func() tea.Msg {
		ev, ok := <-ch
		if !ok {
			return eventsClosedMsg{}
		}
		return eventMsg{ev}
	}
}

func tickCmd() tea.Cmd {
	return tea.Tick(time.Second, func(t time.Time) tea.Msg { return tickMsg(t) })
}

// call runs fn with a bounded context.
func (m *Model) call(fn func(ctx context.Context) tea.Msg) tea.Cmd {
	parent := m.ctx
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(parent, callTimeout)
		defer cancel()
		return fn(ctx)
	}
}

func (m *Model) loadConvs() tea.Cmd {
	m.convsLoading = true
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		cs, err := c.Conversations(ctx)
		return convsMsg{convs: cs, err: err}
	})
}

// reloadConvs reloads the list, at most one load at a time (a burst of
// events costs one or two loads, not one each).
func (m *Model) reloadConvs() tea.Cmd {
	if m.convsLoading {
		m.convsDirty = true
		return nil
	}
	return m.loadConvs()
}

func (m *Model) loadContacts() tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		cs, err := c.Contacts(ctx)
		return contactsMsg{contacts: cs, err: err}
	})
}

func (m *Model) loadPresence(name string) tea.Cmd {
	c := m.c
	return func() tea.Msg {
		p, ok := c.Presence(name)
		return presenceMsg{name: name, p: p, ok: ok}
	}
}

func (m *Model) loadGroup(conv client.ConvID) tea.Cmd {
	c := m.c
	gid, ok := conv.Group()
	if !ok {
		return nil
	}
	return m.call(func(ctx context.Context) tea.Msg {
		g, err := c.Group(ctx, gid)
		if err != nil {
			return groupMsg{conv: conv}
		}
		return groupMsg{conv: conv, g: g}
	})
}

// loadHistory loads the newest page of conv; with selKey (a search hit)
// it pages back until that message is loaded.
func (m *Model) loadHistory(conv client.ConvID, selKey string) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		msgs, err := c.History(ctx, conv, pageSize, 0)
		if err != nil {
			return historyMsg{conv: conv, err: err}
		}
		more := len(msgs) == pageSize
		if selKey != "" {
			// A search hit may be far back: page until it is loaded,
			// bounded so a huge history cannot stall the jump.
			for pages := 0; more && pages < 200 && !containsKey(msgs, selKey); pages++ {
				older, err := c.History(ctx, conv, pageSize, msgs[0].Seq)
				if err != nil {
					return historyMsg{conv: conv, err: err}
				}
				more = len(older) == pageSize
				msgs = append(older, msgs...)
			}
		}
		return historyMsg{conv: conv, msgs: msgs, replace: true, hasMore: more, selKey: selKey}
	})
}

func containsKey(msgs []client.Message, k string) bool {
	for i := range msgs {
		if msgKey(&msgs[i]) == k {
			return true
		}
	}
	return false
}

// loadNewest merges the newest page (after group changes, whose system
// lines arrive without a message event).
func (m *Model) loadNewest(conv client.ConvID) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		msgs, err := c.History(ctx, conv, 20, 0)
		return historyMsg{conv: conv, msgs: msgs, err: err}
	})
}

func (m *Model) loadOlder() tea.Cmd {
	ch := &m.chat
	if !ch.hasOlder || ch.loadingOlder || len(ch.msgs) == 0 {
		return nil
	}
	ch.loadingOlder = true
	c, conv, before := m.c, ch.conv, ch.msgs[0].Seq
	return m.call(func(ctx context.Context) tea.Msg {
		msgs, err := c.History(ctx, conv, pageSize, before)
		return historyMsg{conv: conv, msgs: msgs, older: true, hasMore: len(msgs) == pageSize, err: err}
	})
}

// refreshMessages reloads outgoing messages by id (their status changed).
func (m *Model) refreshMessages(ids []client.MessageID) tea.Cmd {
	c, me := m.c, m.me
	loaded := map[client.MessageID]bool{}
	for i := range m.chat.msgs {
		if m.chat.msgs[i].Outgoing {
			loaded[m.chat.msgs[i].ID] = true
		}
	}
	var want []client.MessageID
	for _, id := range ids {
		if loaded[id] || len(ids) == 1 {
			want = append(want, id)
		}
	}
	if len(want) == 0 {
		return nil
	}
	return m.call(func(ctx context.Context) tea.Msg {
		var out []client.Message
		for _, id := range want {
			if msg, err := c.Message(ctx, me, id); err == nil {
				out = append(out, *msg)
			}
		}
		return msgUpdateMsg{msgs: out}
	})
}

func (m *Model) markRead(conv client.ConvID) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		if err := c.MarkRead(ctx, conv); err != nil {
			return doneMsg{err: fmt.Errorf("mark read: %w", err)}
		}
		return doneMsg{reload: true}
	})
}

func (m *Model) sendTyping(conv client.ConvID, started bool) tea.Cmd {
	if conv == "" {
		return nil
	}
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		// Typing is best effort: offline or not yet keyed peers just
		// do not see it.
		_ = c.SendTyping(ctx, conv, started)
		return nil
	})
}

// send sends text (as a reply to quote when set) to conv.
func (m *Model) send(conv client.ConvID, text string, quote *client.Quote) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		var opts []client.SendOption
		if quote != nil {
			opts = append(opts, client.WithQuote(*quote))
		}
		var id client.MessageID
		var err error
		if gid, ok := conv.Group(); ok {
			id, err = c.SendGroup(ctx, gid, text, opts...)
		} else {
			id, err = c.Send(ctx, conv.Peer(), text, opts...)
		}
		return sentMsg{conv: conv, id: id, text: text, err: err}
	})
}

func (m *Model) register(server, name string) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		return registeredMsg{err: c.Register(ctx, server, name)}
	})
}

// do runs a client action that answers with a doneMsg.
func (m *Model) do(what string, open client.ConvID, fn func(ctx context.Context, c *client.Client) error) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		if err := fn(ctx, c); err != nil {
			return doneMsg{err: err, reload: true}
		}
		return doneMsg{what: what, reload: true, open: open}
	})
}

func (m *Model) createGroup(name string, members []string) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		gid, err := c.CreateGroup(ctx, name, members)
		if err != nil {
			return doneMsg{err: fmt.Errorf("create group: %w", err)}
		}
		return doneMsg{what: "group " + name + " created", reload: true, open: client.GroupConv(gid)}
	})
}

type recipientsMsg struct {
	id         client.MessageID
	recipients []client.RecipientStatus
	err        error
}

func (m *Model) loadRecipients(id client.MessageID) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		rs, err := c.Recipients(ctx, id)
		return recipientsMsg{id: id, recipients: rs, err: err}
	})
}

type safetyMsg struct {
	name    string
	numbers []client.SafetyNumber
	err     error
}

func (m *Model) loadSafety(name string) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		ns, err := c.SafetyNumbers(ctx, name)
		return safetyMsg{name: name, numbers: ns, err: err}
	})
}

type searchResultsMsg struct {
	seq     int
	results []client.Message
	err     error
}

func (m *Model) search(seq int, query string, conv client.ConvID) tea.Cmd {
	c := m.c
	return m.call(func(ctx context.Context) tea.Msg {
		rs, err := c.Search(ctx, query, conv, 100)
		return searchResultsMsg{seq: seq, results: rs, err: err}
	})
}

// runNotify runs the desktop notification command with {from}, {conv}
// and {text} replaced in its arguments.
func (m *Model) runNotify(from, conv, text string) tea.Cmd {
	argv := make([]string, len(m.notify))
	r := strings.NewReplacer("{from}", from, "{conv}", conv, "{text}", text)
	for i, a := range m.notify {
		argv[i] = r.Replace(a)
	}
	parent := m.ctx
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(parent, 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if len(msg) > 100 {
				msg = msg[:100]
			}
			if msg != "" {
				err = errors.New(err.Error() + ": " + msg)
			}
			return notifyDoneMsg{err: err}
		}
		return notifyDoneMsg{}
	}
}
