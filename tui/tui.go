// Package tui is hush's terminal user interface: a Bubble Tea v2 program
// on the client core.
//
// The root Model composes a conversation list, the open conversation (a
// bottom-anchored message view that renders only the messages on
// screen and loads older history a page at a time), a multi-line input
// and at most one dialog (help, new chat, groups, search, message info,
// safety number with a QR code, file prompts, register). File uploads and
// downloads report progress through a channel read by a re-armed command. Each part has its own keys, all from one
// KeyMap that the config file can rebind, and its own size, set by the
// root on every resize.
//
// The UI never waits on the network or the disk: every client call runs
// in a tea.Cmd and answers with a message, and the client's events (new
// messages, receipts, typing, presence, identity changes, connection
// state) arrive through one command that reads Client.Events and is
// re-armed after each event. Conversation-list reloads are coalesced, so
// a burst of events costs one query, not one each.
//
// Only the client package is used to reach hush: the TUI holds no keys
// and sees plaintext only as the client hands it over.
package tui

import (
	"context"
	"errors"
	"fmt"
	"io"

	tea "charm.land/bubbletea/v2"

	"github.com/hushchat/hush/client"
)

// Options configures Run.
type Options struct {
	// Home is the profile directory: the config file is looked for
	// there first (tui.toml).
	Home string
	// ConfigPath names the config file explicitly (it must exist).
	// Empty: Home/tui.toml, then $XDG_CONFIG_HOME/hush/tui.toml
	// (~/.config/hush/tui.toml), else the defaults.
	ConfigPath string
	// NotifyCommand overrides the config's notify_command: a program and
	// its arguments run for each new message in an unfocused, unmuted
	// conversation; {from}, {conv} and {text} are replaced.
	NotifyCommand []string
	// ServerURL prefills the register screen (a profile without an
	// account) ahead of the config's server_url.
	ServerURL string
	// Input and Output replace the terminal (nil: the controlling
	// terminal / standard output).
	Input  io.Reader
	Output io.Writer
}

// Run runs the terminal UI on c until the user quits or ctx ends. It
// consumes c.Events (so nothing else may). A profile without an account
// starts on the register screen.
func Run(ctx context.Context, c *client.Client, opts Options) error {
	if c == nil {
		return errors.New("tui: nil client")
	}
	cfg, _, err := LoadConfig(opts)
	if err != nil {
		return err
	}
	m, err := newModel(ctx, c, cfg, opts)
	if err != nil {
		return fmt.Errorf("tui config: %w", err)
	}
	popts := []tea.ProgramOption{tea.WithContext(ctx)}
	if opts.Input != nil {
		popts = append(popts, tea.WithInput(opts.Input))
	}
	if opts.Output != nil {
		popts = append(popts, tea.WithOutput(opts.Output))
	}
	p := tea.NewProgram(m, popts...)
	_, err = p.Run()
	// The UI marks the client inactive while the terminal lacks focus;
	// leave it active for whoever uses the client next.
	c.SetActive(true)
	if err != nil && !errors.Is(err, tea.ErrProgramKilled) {
		return fmt.Errorf("tui: %w", err)
	}
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() == nil {
		return fmt.Errorf("tui: %w", err)
	}
	return nil
}
