package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/hushchat/hush/client"
)

// These commands read the profile only: they never connect.

var cmdHistory = &command{
	name:    "history",
	args:    "NAME | --group GROUP [--json] [--limit N]",
	summary: "print a conversation's latest messages, oldest first",
	detail: `Reads the profile only (no network). Outgoing messages carry their status
(pending, sent, delivered, read, failed); incoming ones whether they were
marked read. Does not mark anything read: use 'hush read'.`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		group := fs.String("group", "", "the group's `GROUP` name or id")
		asJSON := fs.Bool("json", false, "print one JSON object per line")
		limit := fs.Int("limit", 50, "at most `N` messages (the latest)")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if *limit <= 0 || *limit > 100000 {
			return usagef(fs.cmd.name, "--limit must be between 1 and 100000")
		}
		c, conv, err := a.openConv(ctx, fs, pos, *group, false)
		if err != nil {
			return err
		}
		defer closeClient(c)
		ms, err := c.History(ctx, conv, *limit, 0)
		if err != nil {
			return err
		}
		gn := newGroupNames(c)
		for i := range ms {
			if *asJSON {
				err = writeJSON(a.stdout, toMessageJSON(ctx, gn, &ms[i], true))
			} else {
				err = writeLine(a.stdout, messageText(ctx, gn, &ms[i], true))
			}
			if err != nil {
				return err
			}
		}
		return nil
	},
}

type conversationJSON struct {
	ID           string       `json:"id"`
	Name         string       `json:"name"`
	Group        string       `json:"group,omitempty"`
	LastActivity string       `json:"last_activity"`
	Unread       int          `json:"unread"`
	Muted        bool         `json:"muted"`
	Last         *messageJSON `json:"last,omitempty"`
}

var cmdConversations = &command{
	name:    "conversations",
	args:    "[--json]",
	summary: "list conversations, most recent first, with unread counts",
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print one JSON object per line")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 0, 0, ""); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{})
		if err != nil {
			return err
		}
		defer closeClient(c)
		cs, err := c.Conversations(ctx)
		if err != nil {
			return err
		}
		gn := newGroupNames(c)
		for _, cv := range cs {
			if *asJSON {
				out := conversationJSON{ID: string(cv.ID), Name: cv.Name, LastActivity: stamp(cv.LastActivity), Unread: cv.Unread, Muted: cv.Muted}
				if cv.Group != nil {
					out.Group = cv.Group.String()
				}
				if cv.Last != nil {
					m := toMessageJSON(ctx, gn, cv.Last, true)
					out.Last = &m
				}
				if err := writeJSON(a.stdout, out); err != nil {
					return err
				}
				continue
			}
			name := cv.Name
			if cv.Group != nil {
				name = "[" + name + "]"
			}
			line := fmt.Sprintf("%-24s %s", name, localTime(cv.LastActivity))
			if cv.Unread > 0 {
				line += fmt.Sprintf("  %d unread", cv.Unread)
			}
			if cv.Last != nil {
				line += "  " + clipText(lastWords(cv.Last), 50)
			}
			if err := writeLine(a.stdout, line); err != nil {
				return err
			}
		}
		return nil
	},
}

func lastWords(m *client.Message) string {
	switch {
	case m.Kind == client.KindUndecryptable:
		return m.Sender + ": [could not be decrypted]"
	case m.Attachment != nil:
		return fmt.Sprintf("%s: [file %s]", m.Sender, m.Attachment.FileName)
	}
	return m.Sender + ": " + m.Text
}

type contactJSON struct {
	Name            string   `json:"name"`
	Verified        bool     `json:"verified"`
	IdentityChanged bool     `json:"identity_changed"`
	Devices         []uint32 `json:"devices"`
	Since           string   `json:"since"`
}

var cmdContacts = &command{
	name:    "contacts",
	args:    "[--json]",
	summary: "list the accounts this device talks to, with their trust state",
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print one JSON object per line")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 0, 0, ""); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{})
		if err != nil {
			return err
		}
		defer closeClient(c)
		cs, err := c.Contacts(ctx)
		if err != nil {
			return err
		}
		for _, ct := range cs {
			if *asJSON {
				if err := writeJSON(a.stdout, contactJSON{Name: ct.Name, Verified: ct.Verified, IdentityChanged: ct.IdentityChanged,
					Devices: ct.Devices, Since: stamp(ct.Since)}); err != nil {
					return err
				}
				continue
			}
			var notes []string
			switch {
			case ct.IdentityChanged:
				notes = append(notes, "IDENTITY CHANGED (hush safety "+ct.Name+", then hush trust "+ct.Name+")")
			case ct.Verified:
				notes = append(notes, "verified")
			default:
				notes = append(notes, "not verified")
			}
			notes = append(notes, fmt.Sprintf("%d device%s", len(ct.Devices), plural(len(ct.Devices))))
			if err := writeLine(a.stdout, fmt.Sprintf("%-24s %s", ct.Name, strings.Join(notes, ", "))); err != nil {
				return err
			}
		}
		return nil
	},
}
