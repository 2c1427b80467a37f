package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/protocol"
)

// Group changes travel as encrypted messages to the members, so each
// command waits (--timeout) until the relay has them, like send.

const groupRefHelp = `GROUP is the group's name (among groups this account is in), its id (32 hex
digits, as printed by 'group create' and 'group list'), or a prefix of the id
of at least 6 digits.`

var cmdGroupCreate = &command{
	name:    "group create",
	args:    "NAME --members a,b,c",
	summary: "create a group with this account as admin; prints the group id",
	detail: `Creates the group, tells the members (an encrypted group update) and hands
them this device's sender key. Prints the group id (32 hex digits). Up to
1024 members.`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		list := fs.String("members", "", "comma-separated account `NAMES` (besides you)")
		timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the relay")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 1, 1, "group NAME"); err != nil {
			return err
		}
		name, err := groupName(fs.cmd.name, pos[0])
		if err != nil {
			return err
		}
		var names []string
		for _, m := range strings.Split(*list, ",") {
			if m = strings.TrimSpace(m); m == "" {
				continue
			}
			n, err := accountName(fs.cmd.name, m)
			if err != nil {
				return err
			}
			names = append(names, n)
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{online: true})
		if err != nil {
			return err
		}
		defer closeClient(c)
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		id, err := c.CreateGroup(rctx, name, names)
		if err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, id)
		return flushOrExplain(ctx, c, *timeout, "group created")
	},
}

// groupName checks a group name from the command line.
func groupName(cmd, s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", usagef(cmd, "the group name is empty")
	}
	if len(s) > protocol.MaxGroupNameLen {
		return "", usagef(cmd, "the group name is %d bytes; the limit is %d", len(s), protocol.MaxGroupNameLen)
	}
	return s, nil
}

// groupMembersCommand is group add and group remove.
func groupMembersCommand(name, summary string, change func(c *client.Client, ctx context.Context, id client.GroupID, names ...string) error) *command {
	cmd := &command{name: name, args: "GROUP NAME…", summary: summary, detail: groupRefHelp}
	cmd.run = func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the relay")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 2, -1, "GROUP and account NAME"); err != nil {
			return err
		}
		var names []string
		for _, p := range pos[1:] {
			n, err := accountName(fs.cmd.name, p)
			if err != nil {
				return err
			}
			names = append(names, n)
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{online: true})
		if err != nil {
			return err
		}
		defer closeClient(c)
		id, err := c.FindGroup(ctx, pos[0])
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if err := change(c, rctx, id, names...); err != nil {
			return err
		}
		return flushOrExplain(ctx, c, *timeout, "group changed")
	}
	return cmd
}

var cmdGroupAdd = groupMembersCommand("group add", "add accounts to a group",
	func(c *client.Client, ctx context.Context, id client.GroupID, names ...string) error {
		return c.AddMembers(ctx, id, names...)
	})

var cmdGroupRemove = groupMembersCommand("group remove", "remove accounts from a group (admins only); the others rotate their keys",
	func(c *client.Client, ctx context.Context, id client.GroupID, names ...string) error {
		return c.RemoveMembers(ctx, id, names...)
	})

var cmdGroupLeave = &command{
	name:    "group leave",
	args:    "GROUP",
	summary: "leave a group; the others rotate their keys",
	detail:  groupRefHelp,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the relay")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 1, 1, "GROUP"); err != nil {
			return err
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{online: true})
		if err != nil {
			return err
		}
		defer closeClient(c)
		id, err := c.FindGroup(ctx, pos[0])
		if err != nil {
			return err
		}
		if err := c.LeaveGroup(ctx, id); err != nil {
			return err
		}
		return flushOrExplain(ctx, c, *timeout, "left the group")
	},
}

var cmdGroupRename = &command{
	name:    "group rename",
	args:    "GROUP NEWNAME",
	summary: "rename a group",
	detail:  groupRefHelp,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the relay")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 2, 2, "GROUP and NEWNAME"); err != nil {
			return err
		}
		name, err := groupName(fs.cmd.name, pos[1])
		if err != nil {
			return err
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *timeout); err != nil {
			return err
		}
		c, err := a.open(ctx, openOptions{online: true})
		if err != nil {
			return err
		}
		defer closeClient(c)
		id, err := c.FindGroup(ctx, pos[0])
		if err != nil {
			return err
		}
		if err := c.RenameGroup(ctx, id, name); err != nil {
			return err
		}
		return flushOrExplain(ctx, c, *timeout, "group renamed")
	},
}

var cmdGroupList = &command{
	name:    "group list",
	args:    "[--json] [--all]",
	summary: "list the groups this account is in",
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print one JSON object per line")
		all := fs.Bool("all", false, "include groups this account left or was removed from")
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
		gs, err := c.Groups(ctx)
		if err != nil {
			return err
		}
		for i := range gs {
			g := &gs[i]
			if !g.Active && !*all {
				continue
			}
			if *asJSON {
				if err := writeJSON(a.stdout, toGroupJSON(g)); err != nil {
					return err
				}
				continue
			}
			var ms []string
			for _, m := range g.Members {
				if m.Admin {
					ms = append(ms, m.Account+"*")
				} else {
					ms = append(ms, m.Account)
				}
			}
			state := ""
			if !g.Active {
				state = "  (not a member)"
			}
			if err := writeLine(a.stdout, fmt.Sprintf("%s  %s  %s%s", g.ID, g.Name, strings.Join(ms, ","), state)); err != nil {
				return err
			}
		}
		return nil
	},
}
