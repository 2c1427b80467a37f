package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

var cmdRegister = &command{
	name:    "register",
	args:    "--server URL [--invite CODE] NAME",
	summary: "create an account NAME on a hush server, with this profile as its first device",
	detail: `Generates this device's identity key and prekeys (kept in the profile),
uploads the public halves to the server at URL (hush-server's address, e.g.
http://127.0.0.1:8080) and claims NAME. Names are 3–32 characters of a–z,
0–9, '_', '.', '-'; capitals are folded to lower case.

An interrupted registration can be finished by running the same command
again. Prints "registered NAME (device N)" on stdout.`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		server := fs.String("server", a.env.Getenv("HUSH_SERVER"), "hush server `URL` (env HUSH_SERVER)")
		invite := fs.String("invite", a.env.Getenv("HUSH_INVITE"), "invite `CODE`, for servers that require one (env HUSH_INVITE)")
		relay := fs.String("relay", "", "relay WebSocket `URL`, when the relay is not at the server's /v1/ws")
		timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 1, 1, "account NAME"); err != nil {
			return err
		}
		name, err := accountName(fs.cmd.name, pos[0])
		if err != nil {
			return err
		}
		if err := checkServerURL(fs.cmd.name, "server", *server, "http", "https"); err != nil {
			return err
		}
		if *relay != "" {
			if err := checkServerURL(fs.cmd.name, "relay", *relay, "ws", "wss"); err != nil {
				return err
			}
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{fresh: true, invite: *invite, relay: *relay})
		if err != nil {
			return err
		}
		defer closeClient(c)
		if acc, ok := c.Account(); ok {
			return fmt.Errorf("register: this profile already has the account %s on %s; use another --home for a second account", acc.Name, acc.ServerURL)
		}
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if err := c.Register(rctx, strings.TrimRight(*server, "/"), name); err != nil {
			return err
		}
		acc, _ := c.Account()
		fmt.Fprintf(a.stdout, "registered %s (device %d)\n", acc.Name, acc.DeviceID)
		return nil
	},
}

// checkServerURL rejects a URL the client could not use.
func checkServerURL(cmd, flagName, s string, schemes ...string) error {
	if s == "" {
		return usagef(cmd, "--%s URL is required", flagName)
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return usagef(cmd, "--%s %q is not a URL like %s://host:port", flagName, clip(s), schemes[0])
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			return nil
		}
	}
	return usagef(cmd, "--%s %q: the scheme must be %s", flagName, clip(s), strings.Join(schemes, " or "))
}

var cmdLink = &command{
	name:    "link",
	args:    "[CODE | -]",
	summary: "print a code that adds a new device to this account, or (with CODE) join an account",
	detail: `On a device that has an account, 'hush link' prints a link code (one line).
On the new device, with a new --home, 'hush link CODE' (or 'hush link -' to
read the code from stdin, which keeps it out of the shell history) joins the
account as another device: it gets its own keys, and sees the account's
conversations from then on. The code carries the server's address.

The code works like a password until it expires (a day by default): anyone
holding it can add a device to the account. Move it only over a channel you
trust, and never paste it into a chat.`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		relay := fs.String("relay", "", "relay WebSocket `URL` for the new device, overriding the one in the code")
		timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 0, 1, "CODE"); err != nil {
			return err
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if len(pos) == 0 {
			if *relay != "" {
				return usagef(fs.cmd.name, "--relay applies when joining with a CODE")
			}
			c, err := a.open(ctx, openOptions{})
			if err != nil {
				return err
			}
			defer closeClient(c)
			code, err := c.NewLinkCode(rctx)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, code)
			fmt.Fprintln(a.stderr, "This code lets whoever holds it add a device to your account until it expires. On the new device run: hush --home NEWDIR link -")
			return nil
		}
		code := pos[0]
		if code == "-" {
			line, err := bufio.NewReader(io.LimitReader(a.env.Stdin, 8192)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("link: read the code from stdin: %w", err)
			}
			code = strings.TrimSpace(line)
		}
		if *relay != "" {
			if err := checkServerURL(fs.cmd.name, "relay", *relay, "ws", "wss"); err != nil {
				return err
			}
		}
		c, err := a.open(ctx, openOptions{fresh: true, relay: *relay})
		if err != nil {
			return err
		}
		defer closeClient(c)
		if acc, ok := c.Account(); ok {
			return fmt.Errorf("link: this profile already has the account %s; use a new --home for the new device", acc.Name)
		}
		if err := c.LinkDevice(rctx, code); err != nil {
			return err
		}
		acc, _ := c.Account()
		fmt.Fprintf(a.stdout, "linked to %s (device %d)\n", acc.Name, acc.DeviceID)
		return nil
	},
}

var cmdWhoami = &command{
	name:    "whoami",
	args:    "[--json]",
	summary: "show this profile's account, device and server",
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print a JSON object")
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
		acc, _ := c.Account()
		if *asJSON {
			return writeJSON(a.stdout, whoamiJSON{Name: acc.Name, Device: acc.DeviceID, Server: acc.ServerURL, Relay: acc.RelayURL, Home: a.home})
		}
		fmt.Fprintf(a.stdout, "%s (device %d) on %s\n", acc.Name, acc.DeviceID, acc.ServerURL)
		return nil
	},
}

type whoamiJSON struct {
	Name   string `json:"name"`
	Device uint32 `json:"device"`
	Server string `json:"server"`
	Relay  string `json:"relay"`
	Home   string `json:"home"`
}

var cmdDevices = &command{
	name:    "devices",
	args:    "[--json]",
	summary: "list this account's devices (asks the server)",
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print one JSON object per line")
		timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 0, 0, ""); err != nil {
			return err
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{})
		if err != nil {
			return err
		}
		defer closeClient(c)
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		ds, err := c.Devices(rctx)
		if err != nil {
			return err
		}
		for _, d := range ds {
			if *asJSON {
				if err := writeJSON(a.stdout, deviceJSON{ID: d.ID, Created: stamp(d.Created), Current: d.Current}); err != nil {
					return err
				}
				continue
			}
			note := ""
			if d.Current {
				note = "  (this device)"
			}
			fmt.Fprintf(a.stdout, "device %d  added %s%s\n", d.ID, localTime(d.Created), note)
		}
		return nil
	},
}

type deviceJSON struct {
	ID      uint32 `json:"id"`
	Created string `json:"created"`
	Current bool   `json:"current"`
}

var cmdDevicesRemove = &command{
	name:    "devices remove",
	args:    "ID",
	summary: "remove device ID from this account (its access ends at once)",
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 1, 1, "device ID"); err != nil {
			return err
		}
		var id uint32
		if _, err := fmt.Sscanf(pos[0], "%d", &id); err != nil || fmt.Sprint(id) != pos[0] || id == 0 {
			return usagef(fs.cmd.name, "device id %q: want a number like 2 (see 'hush devices')", clip(pos[0]))
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{})
		if err != nil {
			return err
		}
		defer closeClient(c)
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if err := c.RemoveDevice(rctx, id); err != nil {
			return err
		}
		if acc, _ := c.Account(); acc.DeviceID == id {
			fmt.Fprintln(a.stderr, "This device was removed: the profile can no longer send or receive.")
		}
		return nil
	},
}
