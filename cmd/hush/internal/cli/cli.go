// Package cli implements the hush command line: the subcommands people and
// scripts run (register, send, receive, listen, group, history, safety…) on
// top of the client core. docs/cli.md is its contract; keep the two in
// step.
//
// Every subcommand opens the profile (one directory per identity, see
// --home), does one thing and closes it again, so a shell script can chain
// commands. The profile is locked while open: two commands on one profile
// cannot run at once (exit code 6), which is why `listen --stdin` accepts
// requests (send, read, typing) on its standard input for bots that stay
// connected.
//
// Output rules, which scripts rely on:
//   - stdout carries only the result: a message id, JSON lines under
//     --json, or human-readable lines; never diagnostics.
//   - errors and notes go to stderr in plain words; keys and tokens are
//     never printed (the link code, which the user asks for, is the one
//     exception and comes with a warning).
//   - the exit code says what kind of failure happened (see ExitOK…).
//
// receive and listen print an event only through client.Run, and return
// nil from the handler only after the line was written and flushed: an
// event is deleted from the profile only once it reached stdout, so an
// interrupted or killed process prints it again next time rather than
// losing it.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/hushchat/hush/client"
)

// Exit codes. They are part of the CLI contract (docs/cli.md).
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitFailed: the operation failed (refused by the server, no such
	// account or group, a send that failed for good, a local error).
	ExitFailed = 1
	// ExitUsage: the command line was wrong; nothing was done.
	ExitUsage = 2
	// ExitIdentity: a contact's identity key changed and the change was
	// not accepted; sending to them is refused until `hush trust NAME`.
	ExitIdentity = 3
	// ExitNetwork: the server could not be reached (or did not answer in
	// time). Work that was stored locally (a queued message, read
	// receipts) goes out the next time hush connects with this profile.
	ExitNetwork = 4
	// ExitNotRegistered: the profile has no account: run `hush register`
	// or `hush link` first.
	ExitNotRegistered = 5
	// ExitProfileLocked: another hush process has the profile open.
	ExitProfileLocked = 6
)

// Env is what a run of the CLI talks to. main passes the process's own;
// tests pass buffers.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment (nil: os.Getenv).
	Getenv func(string) string
	// TUI runs the terminal UI on an open client (`hush` with no
	// command); nil when the terminal UI is not built into this binary.
	TUI func(ctx context.Context, c *client.Client, o TUIOptions) error
	// Configure, when set, adjusts every client configuration before the
	// profile is opened (tests shorten timers with it).
	Configure func(*client.Config)
}

// TUIOptions is what the command line tells the terminal UI.
type TUIOptions struct {
	// Home is the profile directory.
	Home string
	// ConfigPath is --config ("" for the UI's default search).
	ConfigPath string
	// ServerURL is $HUSH_SERVER, to prefill the register screen of a
	// profile without an account.
	ServerURL string
}

// Main runs the hush command line with args (without the program name)
// and returns the process exit code. ctx ends on SIGINT/SIGTERM.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	out := &trackedWriter{w: env.Stdout}
	a := &app{env: env, stdout: out, stderr: env.Stderr}
	err := a.run(ctx, args)
	if out.broken() {
		// The reader of stdout went away (`hush history | head`): not
		// our failure, and there is nobody left to tell.
		return ExitOK
	}
	if err == nil || errors.Is(err, errHelpShown) {
		return ExitOK
	}
	code := exitCode(err)
	fmt.Fprintf(env.Stderr, "hush: %s\n", describe(err))
	if code == ExitUsage {
		var ue *usageError
		if errors.As(err, &ue) && ue.cmd != "" {
			fmt.Fprintf(env.Stderr, "Run 'hush %s --help' for usage.\n", ue.cmd)
		} else {
			fmt.Fprintln(env.Stderr, "Run 'hush help' for usage.")
		}
	}
	return code
}

// app is one run of the command line.
type app struct {
	env    Env
	stdout *trackedWriter
	stderr io.Writer
	cmd    *command // being run

	home     string
	policy   client.IdentityPolicy
	logLevel slog.Level
}

// command is a subcommand.
type command struct {
	name    string // "send", "group create"
	args    string // synopsis after the name
	summary string // one line for `hush help`
	detail  string // paragraphs for `hush CMD --help`
	run     func(ctx context.Context, a *app, args []string) error
}

// commands is filled in init (the table refers to functions that refer
// to the table, for help).
var commands []*command

func init() {
	commands = []*command{
		cmdRegister, cmdLink, cmdWhoami, cmdDevices, cmdDevicesRemove,
		cmdSend, cmdSave, cmdReceive, cmdListen, cmdRead,
		cmdHistory, cmdConversations, cmdContacts,
		cmdGroupCreate, cmdGroupAdd, cmdGroupRemove, cmdGroupLeave, cmdGroupRename, cmdGroupList,
		cmdSafety, cmdVerify, cmdTrust,
		cmdHelp,
	}
}

const globalUsage = `Usage: hush [global flags] [COMMAND [ARGS…]]

hush is an end-to-end encrypted chat. With no command it opens the terminal
UI; with a command it does one thing and exits, for people and scripts alike.

Global flags (before the command):
  --home DIR               profile directory (env HUSH_HOME; default %s)
  --identity-policy P      strict (default) or warn: what to do when a
                           contact's identity key changes (env HUSH_IDENTITY_POLICY)
  --log-level L            error (default), warn or info: client logs on stderr
                           (the terminal UI logs to HOME/hush.log) (env HUSH_LOG_LEVEL)
  --config FILE            terminal UI config file (env HUSH_CONFIG; default
                           HOME/tui.toml, then ~/.config/hush/tui.toml)

Commands:
`

func (a *app) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hush", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	defHome, homeErr := defaultHome(a.env.Getenv)
	home := fs.String("home", a.env.Getenv("HUSH_HOME"), "")
	policy := fs.String("identity-policy", envOr(a.env.Getenv, "HUSH_IDENTITY_POLICY", "strict"), "")
	level := fs.String("log-level", envOr(a.env.Getenv, "HUSH_LOG_LEVEL", "error"), "")
	config := fs.String("config", a.env.Getenv("HUSH_CONFIG"), "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.printGlobalHelp(a.stdout, defHome)
			return errHelpShown
		}
		return &usageError{err: err}
	}
	switch *policy {
	case "strict":
		a.policy = client.Strict
	case "warn":
		a.policy = client.WarnOnly
	default:
		return &usageError{err: fmt.Errorf("--identity-policy %q: want strict or warn", *policy)}
	}
	switch *level {
	case "error":
		a.logLevel = slog.LevelError
	case "warn":
		a.logLevel = slog.LevelWarn
	case "info":
		a.logLevel = slog.LevelInfo
	default:
		// No debug: the Signal library's debug lines may format key
		// material, and nothing of that may reach a terminal.
		return &usageError{err: fmt.Errorf("--log-level %q: want error, warn or info", *level)}
	}
	a.home = *home
	rest := fs.Args()
	if len(rest) == 0 {
		if a.home == "" {
			if homeErr != nil {
				return homeErr
			}
			a.home = defHome
		}
		return a.runTUI(ctx, *config)
	}
	if *config != "" && a.env.Getenv("HUSH_CONFIG") != *config {
		return &usageError{err: errors.New("--config applies to the terminal UI: use it without a command")}
	}
	cmd, cmdArgs, err := lookup(rest)
	if err != nil {
		return err
	}
	if a.home == "" && cmd.name != "help" {
		if homeErr != nil {
			return homeErr
		}
		a.home = defHome
	}
	a.cmd = cmd
	return cmd.run(ctx, a, cmdArgs)
}

// lookup finds the command named by the first one or two words.
func lookup(args []string) (*command, []string, error) {
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			// "devices" must not swallow "devices remove".
			if len(words) == 1 && len(args) > 1 && hasCommand(args[0]+" "+args[1]) {
				continue
			}
			return c, args[len(words):], nil
		}
	}
	if args[0] == "group" {
		if len(args) == 1 {
			return nil, nil, &usageError{err: errors.New("group: missing subcommand (create, add, remove, leave, rename, list)")}
		}
		return nil, nil, &usageError{err: fmt.Errorf("group: unknown subcommand %q (want create, add, remove, leave, rename, list)", clip(args[1]))}
	}
	return nil, nil, &usageError{err: fmt.Errorf("unknown command %q", clip(args[0]))}
}

func hasCommand(name string) bool {
	for _, c := range commands {
		if c.name == name {
			return true
		}
	}
	return false
}

func (a *app) printGlobalHelp(w io.Writer, defHome string) {
	if defHome == "" {
		defHome = "$XDG_DATA_HOME/hush"
	}
	fmt.Fprintf(w, globalUsage, defHome)
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun 'hush COMMAND --help' for a command's flags. Exit codes: 0 ok, 1 failed,\n"+
		"2 usage, 3 identity changed, 4 server unreachable, 5 not registered, 6 profile in use.\n")
}

var cmdHelp = &command{
	name:    "help",
	args:    "[COMMAND]",
	summary: "show help for hush or for one command",
	run: func(ctx context.Context, a *app, args []string) error {
		if len(args) == 0 {
			def, _ := defaultHome(a.env.Getenv)
			a.printGlobalHelp(a.stdout, def)
			return nil
		}
		if len(args) == 1 && args[0] == "group" {
			fmt.Fprintln(a.stdout, "Usage: hush group SUBCOMMAND …")
			fmt.Fprintln(a.stdout)
			for _, c := range commands {
				if strings.HasPrefix(c.name, "group ") {
					fmt.Fprintf(a.stdout, "  hush %s %s\n      %s\n", c.name, c.args, c.summary)
				}
			}
			return nil
		}
		c, _, err := lookup(args)
		if err != nil {
			return err
		}
		if c.name == "help" {
			def, _ := defaultHome(a.env.Getenv)
			a.printGlobalHelp(a.stdout, def)
			return nil
		}
		a.cmd = c
		return c.run(ctx, a, []string{"--help"})
	},
}

// runTUI opens the terminal UI: `hush` with no command. A profile
// without an account is fine: the UI starts on its register screen.
// Client logs go to HOME/hush.log, not to the terminal the UI draws on.
func (a *app) runTUI(ctx context.Context, configPath string) error {
	if a.env.TUI == nil {
		return &usageError{err: errors.New("the terminal UI is not built into this hush; see 'hush help' for the commands")}
	}
	if err := os.MkdirAll(a.home, 0o700); err != nil {
		return fmt.Errorf("profile directory: %w", err)
	}
	logFile, err := os.OpenFile(filepath.Join(a.home, "hush.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open the log file: %w", err)
	}
	defer logFile.Close()
	a.stderr = logFile
	c, err := a.open(ctx, openOptions{online: true, fresh: true})
	a.stderr = a.env.Stderr
	if err != nil {
		return err
	}
	defer closeClient(c)
	return a.env.TUI(ctx, c, TUIOptions{Home: a.home, ConfigPath: configPath, ServerURL: a.env.Getenv("HUSH_SERVER")})
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

// clip shortens user input quoted in an error.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
