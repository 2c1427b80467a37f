// Command echobot is a minimal hush bot built on the client package: it
// answers every text message with "echo: " and the text, as a reply to
// it, in the conversation it came from (to the sender, or to the group).
//
// It shows the three things a bot gets right or loses messages:
//
//   - It handles events with client.Run, which deletes an event from the
//     profile only after the handler returned nil. A handler that fails
//     (or a bot that crashes) sees the event again, so nothing is lost.
//   - Because an event can therefore come twice, the handler is
//     idempotent: before answering it looks for its own earlier answer
//     (a reply quoting the message) and does not answer twice.
//   - Errors that retrying cannot fix (the bot was removed from the
//     group, a message too long) are logged and the event is let go;
//     only transient ones are returned for a retry.
//
// Bots nobody watches run with client.WarnOnly: a contact's changed
// identity key is logged and accepted instead of blocking the bot.
//
//	echobot --home ./echobot-profile --server http://127.0.0.1:8080 --name echobot
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"unicode/utf8"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/protocol"
)

func main() {
	home := flag.String("home", envOr("HUSH_HOME", "echobot-profile"), "profile directory (env HUSH_HOME)")
	server := flag.String("server", os.Getenv("HUSH_SERVER"), "hush server URL, to register when the profile has no account yet (env HUSH_SERVER)")
	name := flag.String("name", "echobot", "account name to register")
	invite := flag.String("invite", os.Getenv("HUSH_INVITE"), "invite code, for servers that require one (env HUSH_INVITE)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c, err := open(ctx, Config{Home: *home, Server: *server, Name: *name, Invite: *invite, Logger: log})
	if err != nil {
		log.Error("start", "err", err)
		os.Exit(1)
	}
	acc, _ := c.Account()
	log.Info("echobot running", "account", acc.Name, "server", acc.ServerURL)
	err = (&bot{c: c, log: log}).serve(ctx)
	c.Close()
	if err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Config says where the bot lives.
type Config struct {
	Home   string
	Server string // used only to register a new profile
	Name   string
	Invite string
	Logger *slog.Logger
	// Tune, when set, adjusts the client configuration (tests shorten
	// timers with it).
	Tune func(*client.Config)
}

// open opens the bot's profile and registers the account if the profile
// has none yet.
func open(ctx context.Context, cfg Config) (*client.Client, error) {
	ccfg := client.Config{Home: cfg.Home, InviteCode: cfg.Invite, IdentityPolicy: client.WarnOnly, Logger: cfg.Logger}
	if cfg.Tune != nil {
		cfg.Tune(&ccfg)
	}
	c, err := client.Open(ctx, ccfg)
	if err != nil {
		return nil, err
	}
	if _, ok := c.Account(); ok {
		return c, nil
	}
	if cfg.Server == "" {
		c.Close()
		return nil, fmt.Errorf("profile %s has no account: pass --server to register %q", cfg.Home, cfg.Name)
	}
	if err := c.Register(ctx, cfg.Server, cfg.Name); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

type bot struct {
	c   *client.Client
	log *slog.Logger
}

// serve handles events until ctx ends.
func (b *bot) serve(ctx context.Context) error {
	err := b.c.Run(ctx, b.handle)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// echoPrefix starts every answer.
const echoPrefix = "echo: "

// handle answers one event. It returns an error only when trying again
// later can help.
func (b *bot) handle(ctx context.Context, ev client.Event) error {
	switch e := ev.(type) {
	case *client.IdentityChangedEvent:
		b.log.Warn("a contact's identity key changed; accepted (warn-only policy)", "contact", e.Account, "device", e.Device)
		return nil
	case *client.MessageEvent:
		return b.echo(ctx, &e.Message)
	}
	return nil
}

func (b *bot) echo(ctx context.Context, m *client.Message) error {
	if m.Outgoing || m.Kind != client.KindText || m.Text == "" {
		return nil // our own messages (from another device), files, system lines
	}
	done, err := b.answered(ctx, m)
	if err != nil {
		return err
	}
	if done {
		return nil // a repeat of an event already handled
	}
	text := clipUTF8(echoPrefix+m.Text, protocol.MaxTextLen)
	quote := client.WithQuote(client.Quote{ID: m.ID, Author: m.Sender, Text: m.Text})
	if m.Group != nil {
		_, err = b.c.SendGroup(ctx, *m.Group, text, quote)
	} else {
		_, err = b.c.Send(ctx, m.Sender, text, quote)
	}
	if permanent(err) {
		b.log.Warn("cannot answer; dropping the message", "from", m.Sender, "conv", m.Conv, "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	// Send queued the answer durably; it goes out in the background.
	if err := b.c.MarkRead(ctx, m.Conv); err != nil && !permanent(err) {
		return err
	}
	return nil
}

// answered reports whether the bot already answered m (its reply quotes
// m). Only recent history is searched: a repeat comes soon after the
// original.
func (b *bot) answered(ctx context.Context, m *client.Message) (bool, error) {
	ms, err := b.c.History(ctx, m.Conv, 200, 0)
	if err != nil {
		return false, err
	}
	for i := range ms {
		if ms[i].Outgoing && ms[i].Quote != nil && ms[i].Quote.ID == m.ID {
			return true, nil
		}
	}
	return false, nil
}

// permanent reports errors that no retry will fix.
func permanent(err error) bool {
	var le *protocol.LimitError
	return errors.Is(err, client.ErrNotMember) || errors.Is(err, client.ErrNoGroup) ||
		errors.Is(err, client.ErrUnknownAccount) || errors.Is(err, client.ErrIdentityChanged) ||
		errors.Is(err, client.ErrDeviceRevoked) || errors.As(err, &le)
}

// clipUTF8 cuts s to at most n bytes without splitting a character.
func clipUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
