package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/protocol"
)

var cmdSend = &command{
	name:    "send",
	args:    "[flags] NAME TEXT… | [flags] --group GROUP TEXT… | [flags] --file PATH (NAME | --group GROUP) [CAPTION…]",
	summary: "send a message or a file to an account or a group and wait until the server has it",
	detail: `Prints the message id (32 hex digits) as soon as the message is stored in the
profile, then waits until the relay acknowledged it (✓). Exit 0 means the
relay stored it for every recipient device.

TEXT is the remaining arguments joined by spaces; a single "-" reads the text
from stdin instead (up to 64 KiB; use it for text with newlines or leading
dashes). Flags go before NAME: everything after NAME is text.

When the relay does not acknowledge within --timeout the exit code is 4: the
message stays queued in the profile and goes out the next time hush connects
with it (any command that connects: send, receive, listen, read). When a
recipient's identity key changed, the exit code is 3 and nothing is sent
until 'hush trust NAME'.

With --file PATH the file is encrypted on this device, uploaded to the
server's media store (which only ever sees ciphertext), and the message
carries its key, name, type and size; the remaining arguments are an
optional caption. Images (PNG, JPEG, GIF) also carry a small preview and
their dimensions, inside the encrypted message. A group file is uploaded
once for all members. Upload progress is shown on stderr when it is a
terminal. The server limits the size of a file (100 MiB by default).`,
	run: runSend,
}

func runSend(ctx context.Context, a *app, args []string) error {
	fs := a.flags()
	group := fs.String("group", "", "send to `GROUP` (its name, or its id or an id prefix of 6+ hex digits)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the relay's acknowledgement")
	quote := fs.String("quote", "", "reply to the message with this `ID` (from the same conversation)")
	file := fs.String("file", "", "send the file at `PATH` (the text, if any, is its caption)")
	pos, err := fs.parse(args, true)
	if err != nil {
		return err
	}
	if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
		return err
	}
	var to string
	if *group == "" {
		if len(pos) == 0 {
			return usagef(fs.cmd.name, "missing recipient NAME (or --group GROUP)")
		}
		if to, err = accountName(fs.cmd.name, pos[0]); err != nil {
			return err
		}
		pos = pos[1:]
	}
	var text string
	if *file != "" {
		text, err = captionArg(fs.cmd.name, pos, a.env.Stdin)
		if err == nil {
			err = checkSendFile(fs.cmd.name, *file)
		}
	} else {
		text, err = textArg(fs.cmd.name, pos, a.env.Stdin)
	}
	if err != nil {
		return err
	}
	var quoteID client.MessageID
	if *quote != "" {
		if quoteID, err = client.ParseMessageID(*quote); err != nil {
			return usagef(fs.cmd.name, "--quote: %v", err)
		}
	}

	c, err := a.open(ctx, openOptions{online: true})
	if err != nil {
		return err
	}
	defer closeClient(c)
	conv := client.Direct(to)
	var gid client.GroupID
	if *group != "" {
		if gid, err = c.FindGroup(ctx, *group); err != nil {
			return err
		}
		conv = client.GroupConv(gid)
	}
	var opts []client.SendOption
	if *quote != "" {
		q, err := findQuote(ctx, c, conv, quoteID)
		if err != nil {
			return err
		}
		opts = append(opts, client.WithQuote(q))
	}
	var id client.MessageID
	switch {
	case *file != "":
		id, err = a.sendFile(ctx, c, to, gid, *file, text, opts)
	case *group != "":
		id, err = c.SendGroup(ctx, gid, text, opts...)
	default:
		id, err = c.Send(ctx, to, text, opts...)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, id)
	return waitSent(ctx, c, id, *timeout)
}

// waitSent waits for the relay's acknowledgement of id, then briefly for
// the rest of the outbox (the copy for this account's other devices, owed
// receipts), so that exiting does not leave them behind needlessly.
func waitSent(ctx context.Context, c *client.Client, id client.MessageID, timeout time.Duration) error {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := c.WaitSent(wctx, id)
	switch {
	case err == nil:
	case errors.Is(err, client.ErrIdentityChanged):
		return fmt.Errorf("message %s is held, not sent: %w", id, err)
	case wctx.Err() != nil && ctx.Err() == nil:
		return &exitError{code: ExitNetwork, err: fmt.Errorf("message %s is queued, but the relay did not acknowledge it within %s (%s); it goes out the next time hush connects with this profile",
			id, timeout, connectionWords(c))}
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted: message %s is queued and goes out the next time hush connects with this profile", id)
	default:
		return fmt.Errorf("message %s: %w", id, err)
	}
	left := timeout - time.Since(start)
	drainOutbox(ctx, c, min(max(left, 0), 5*time.Second))
	return nil
}

// textArg joins the text arguments, or reads stdin for "-".
func textArg(cmd string, words []string, stdin io.Reader) (string, error) {
	if len(words) == 1 && words[0] == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, protocol.MaxTextLen+1))
		if err != nil {
			return "", fmt.Errorf("%s: read the text from stdin: %w", cmd, err)
		}
		if len(b) > protocol.MaxTextLen {
			return "", usagef(cmd, "the text on stdin is longer than %d bytes", protocol.MaxTextLen)
		}
		s := strings.TrimSuffix(string(b), "\n")
		if strings.TrimSpace(s) == "" {
			return "", usagef(cmd, "the text on stdin is empty")
		}
		return s, nil
	}
	s := strings.Join(words, " ")
	if strings.TrimSpace(s) == "" {
		return "", usagef(cmd, "missing TEXT")
	}
	if len(s) > protocol.MaxTextLen {
		return "", usagef(cmd, "the text is %d bytes; the limit is %d", len(s), protocol.MaxTextLen)
	}
	return s, nil
}

// findQuote finds message id among the latest messages of conv.
func findQuote(ctx context.Context, c *client.Client, conv client.ConvID, id client.MessageID) (client.Quote, error) {
	const page, pages = 500, 20
	var before int64
	for range pages {
		ms, err := c.History(ctx, conv, page, before)
		if err != nil {
			return client.Quote{}, err
		}
		for i := range ms {
			if ms[i].ID == id {
				return client.Quote{ID: id, Author: ms[i].Sender, Text: ms[i].Text}, nil
			}
		}
		if len(ms) < page {
			break
		}
		before = ms[0].Seq
	}
	return client.Quote{}, fmt.Errorf("--quote: no message %s among the latest %d of this conversation", id, page*pages)
}

var cmdRead = &command{
	name:    "read",
	args:    "NAME | --group GROUP",
	summary: "mark a conversation read (sends read receipts)",
	detail: `Marks every incoming message of the conversation read and sends read receipts
to their senders (and a note to this account's other devices), then waits
until the relay has them. If it cannot reach the relay within --timeout the
exit code is 4 and the receipts go out the next time hush connects.`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		group := fs.String("group", "", "the group's `GROUP` name or id")
		timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the relay")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, conv, err := a.openConv(ctx, fs, pos, *group, true)
		if err != nil {
			return err
		}
		defer closeClient(c)
		if err := c.MarkRead(ctx, conv); err != nil {
			return err
		}
		return flushOrExplain(ctx, c, *timeout, "read receipts")
	},
}

// openConv opens the profile and resolves "NAME" or "--group GROUP" to a
// conversation.
func (a *app) openConv(ctx context.Context, fs *flagSet, pos []string, group string, online bool) (*client.Client, client.ConvID, error) {
	var name string
	if group == "" {
		if err := fs.want(pos, 1, 1, "NAME (or --group GROUP)"); err != nil {
			return nil, "", err
		}
		n, err := accountName(fs.cmd.name, pos[0])
		if err != nil {
			return nil, "", err
		}
		name = n
	} else if err := fs.want(pos, 0, 0, ""); err != nil {
		return nil, "", usagef(fs.cmd.name, "give NAME or --group GROUP, not both")
	}
	c, err := a.open(ctx, openOptions{online: online})
	if err != nil {
		return nil, "", err
	}
	if group == "" {
		return c, client.Direct(name), nil
	}
	id, err := c.FindGroup(ctx, group)
	if err != nil {
		closeClient(c)
		return nil, "", err
	}
	return c, client.GroupConv(id), nil
}
