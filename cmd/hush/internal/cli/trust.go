package cli

import (
	"context"
	"fmt"

	"github.com/hushchat/hush/client"
)

// Trust commands work on the profile only (no network).

type safetyJSON struct {
	Account  string `json:"account"`
	Device   uint32 `json:"device"`
	Digits   string `json:"digits"`
	Verified bool   `json:"verified"`
	Changed  bool   `json:"changed"`
}

var cmdSafety = &command{
	name:    "safety",
	args:    "NAME [--json]",
	summary: "print the safety number with NAME (60 digits in groups of 5)",
	detail: `Both sides see the same number. Compare it with NAME in person or over a
channel you trust (read it aloud on a call); if it matches, run
'hush verify NAME'. A contact with several devices has one number per
device, printed as "device N: …". Needs a message exchanged with NAME first.`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print one JSON object per device")
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
		c, err := a.open(ctx, openOptions{})
		if err != nil {
			return err
		}
		defer closeClient(c)
		sns, err := c.SafetyNumbers(ctx, name)
		if err != nil {
			return err
		}
		for i := range sns {
			sn := &sns[i]
			if *asJSON {
				if err := writeJSON(a.stdout, safetyJSON{Account: sn.Account, Device: sn.Device, Digits: sn.Digits, Verified: sn.Verified, Changed: sn.Changed}); err != nil {
					return err
				}
				continue
			}
			line := sn.Grouped()
			if len(sns) > 1 {
				line = fmt.Sprintf("device %d: %s", sn.Device, line)
			}
			if _, err := fmt.Fprintln(a.stdout, line); err != nil {
				return err
			}
			if sn.Changed {
				fmt.Fprintf(a.stderr, "Note: %s's identity key (device %d) changed and was not accepted yet; this is the new key's number.\n", name, sn.Device)
			}
		}
		return nil
	},
}

var cmdVerify = &command{
	name:    "verify",
	args:    "NAME",
	summary: "mark NAME verified after comparing safety numbers",
	detail:  `Also accepts a pending identity change (the numbers compared were the new key's).`,
	run: func(ctx context.Context, a *app, args []string) error {
		return trustCommand(ctx, a, args, func(c *client.Client, name string) (string, error) {
			if err := c.Verify(ctx, name); err != nil {
				return "", err
			}
			return name + " is verified", nil
		})
	},
}

var cmdTrust = &command{
	name:    "trust",
	args:    "NAME",
	summary: "accept NAME's changed identity key (after comparing safety numbers)",
	detail: `When a contact's identity key changes (a new phone, a reinstall — or someone
in the middle), hush holds their messages and refuses to send to them (exit
code 3). Compare safety numbers ('hush safety NAME'), then run this: held
messages are shown by the next receive, and held sends go out the next time
hush connects.`,
	run: func(ctx context.Context, a *app, args []string) error {
		return trustCommand(ctx, a, args, func(c *client.Client, name string) (string, error) {
			changed := false
			if cs, err := c.Contacts(ctx); err == nil {
				for _, ct := range cs {
					changed = changed || (ct.Name == name && ct.IdentityChanged)
				}
			}
			if err := c.Trust(ctx, name); err != nil {
				return "", err
			}
			if !changed {
				return "nothing to accept: " + name + "'s identity key did not change", nil
			}
			return "accepted " + name + "'s new identity key", nil
		})
	},
}

func trustCommand(ctx context.Context, a *app, args []string, do func(c *client.Client, name string) (string, error)) error {
	fs := a.flags()
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
	c, err := a.open(ctx, openOptions{})
	if err != nil {
		return err
	}
	defer closeClient(c)
	msg, err := do(c, name)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.stdout, msg)
	return err
}
