// Command hush is the hush chat client: with no command it opens the
// terminal UI (package tui); with a command (register, send, receive, listen, group…) it
// does one thing and exits, printing results (JSON lines with --json) on
// stdout for scripts and bots. docs/cli.md is the contract; the commands
// live in cmd/hush/internal/cli, the chat logic in package client.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/cmd/hush/internal/cli"
	"github.com/hushchat/hush/tui"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// With SIGPIPE caught, a write to a closed stdout fails with EPIPE
	// instead of killing the process, so `hush listen --json | head -1`
	// ends cleanly and the events not yet printed stay in the profile.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	code := cli.Main(ctx, os.Args[1:], cli.Env{
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		TUI:    runTUI,
	})
	stop()
	os.Exit(code)
}

// runTUI is `hush` with no command: the terminal UI.
func runTUI(ctx context.Context, c *client.Client, o cli.TUIOptions) error {
	return tui.Run(ctx, c, tui.Options{Home: o.Home, ConfigPath: o.ConfigPath, ServerURL: o.ServerURL})
}
