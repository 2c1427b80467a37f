package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/hushchat/hush/client"
)

// defaultHome is the profile directory when neither --home nor HUSH_HOME
// names one: $XDG_DATA_HOME/hush, else ~/.local/share/hush (the XDG
// default) on Unix; the user config directory on macOS and Windows
// (~/Library/Application Support/hush, %AppData%\hush).
func defaultHome(getenv func(string) string) (string, error) {
	if runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		d, err := os.UserConfigDir()
		if err != nil {
			return "", fmt.Errorf("no profile directory: set --home or HUSH_HOME (%w)", err)
		}
		return filepath.Join(d, "hush"), nil
	}
	if d := getenv("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "hush"), nil
	}
	h := getenv("HOME")
	if h == "" {
		return "", errors.New("no profile directory: $HOME is not set; set --home or HUSH_HOME")
	}
	return filepath.Join(h, ".local", "share", "hush"), nil
}

// openOptions says how a command uses the profile.
type openOptions struct {
	// online: connect to the relay (sending, receiving). Otherwise the
	// client stays offline: local queries never touch the network.
	online bool
	// fresh: the command creates the account (register, link), so the
	// profile need not have one — and is created if missing.
	fresh bool
	// invite and relay: registration settings (register, link).
	invite, relay string
}

// open opens the profile. Unless o.fresh, a missing profile or one
// without an account is ErrNotRegistered, and no directory is created.
func (a *app) open(ctx context.Context, o openOptions) (*client.Client, error) {
	if !o.fresh {
		if _, err := os.Stat(filepath.Join(a.home, "hush.db")); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w (profile %s)", client.ErrNotRegistered, a.home)
		}
	}
	cfg := client.Config{
		Home:           a.home,
		IdentityPolicy: a.policy,
		Offline:        !o.online,
		InviteCode:     o.invite,
		RelayURL:       o.relay,
		Logger:         slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: a.logLevel})),
	}
	if a.env.Configure != nil {
		a.env.Configure(&cfg)
	}
	c, err := client.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if !o.fresh {
		if _, ok := c.Account(); !ok {
			closeClient(c)
			return nil, fmt.Errorf("%w (profile %s)", client.ErrNotRegistered, a.home)
		}
	}
	return c, nil
}

// closeClient closes c. Close also ends a connection whose dial completes
// while it runs (TestQuickFailure guards that: a command failing right after
// opening the profile once hung here).
func closeClient(c *client.Client) {
	c.Close()
}

// drainOutbox waits until the outbox is empty (receipts, group updates
// and copies for this account's other devices went out) or d passes. It
// reports how many items are left.
func drainOutbox(ctx context.Context, c *client.Client, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		n, err := c.PendingCount(ctx)
		if err != nil || n == 0 {
			return n, err
		}
		if time.Now().After(deadline) {
			return n, nil
		}
		select {
		case <-time.After(25 * time.Millisecond):
		case <-ctx.Done():
			return n, nil
		}
	}
}

// flushOrExplain drains the outbox for a command whose point is what it
// queued (read receipts, a group change): when the server cannot be
// reached in time it returns an ExitNetwork error saying the work is kept.
func flushOrExplain(ctx context.Context, c *client.Client, d time.Duration, what string) error {
	n, err := drainOutbox(ctx, c, d)
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return &exitError{code: ExitNetwork, err: fmt.Errorf("%s: done here, but not yet delivered to the server within %s (%s); it goes out the next time hush connects with this profile",
		what, d, connectionWords(c))}
}

// connectionWords describes the connection state for an error message.
func connectionWords(c *client.Client) string {
	st, why := c.State()
	if why != "" {
		return fmt.Sprintf("%s: %s", st, why)
	}
	return st.String()
}
