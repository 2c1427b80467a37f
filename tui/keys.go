package tui

import (
	"fmt"
	"slices"
	"strings"

	"charm.land/bubbles/v2/key"
)

// Action names a user action. The names are the keys of the [keys] table
// in the config file, so they are stable.
type Action string

// Actions, in the order the help view lists them.
const (
	ActUp         Action = "up"
	ActDown       Action = "down"
	ActPageUp     Action = "page_up"
	ActPageDown   Action = "page_down"
	ActTop        Action = "top"
	ActBottom     Action = "bottom"
	ActOpen       Action = "open"
	ActBack       Action = "back"
	ActNextPane   Action = "next_pane"
	ActPrevPane   Action = "prev_pane"
	ActCompose    Action = "compose"
	ActSend       Action = "send"
	ActNewline    Action = "newline"
	ActCancel     Action = "cancel"
	ActReply      Action = "reply"
	ActInfo       Action = "message_info"
	ActSearch     Action = "search"
	ActSearchAll  Action = "search_all"
	ActNewChat    Action = "new_chat"
	ActNewGroup   Action = "new_group"
	ActAddMember  Action = "add_members"
	ActRemove     Action = "remove_members"
	ActLeave      Action = "leave_group"
	ActRename     Action = "rename_group"
	ActSafety     Action = "safety_number"
	ActVerify     Action = "mark_verified"
	ActAccept     Action = "accept_identity"
	ActMute       Action = "toggle_mute"
	ActHelp       Action = "help"
	ActQuit       Action = "quit"
	ActForceQuit  Action = "force_quit"
	ActNextUnread Action = "next_unread"
	ActAttach     Action = "send_file"
	ActSave       Action = "save_file"
	ActOpenFile   Action = "open_file"
	ActScrollUp   Action = "scroll_up"
	ActScrollDown Action = "scroll_down"
)

type binding struct {
	act   Action
	keys  []string
	help  string
	group string
}

// defaultBindings lists every binding with its defaults: vim keys, arrows
// and emacs keys side by side.
var defaultBindings = []binding{
	{ActUp, []string{"up", "k", "ctrl+p"}, "move up (conversation / message)", "Navigation"},
	{ActDown, []string{"down", "j", "ctrl+n"}, "move down", "Navigation"},
	{ActPageUp, []string{"pgup", "ctrl+b", "alt+v"}, "page up", "Navigation"},
	{ActPageDown, []string{"pgdown", "ctrl+f", "ctrl+v"}, "page down", "Navigation"},
	{ActTop, []string{"home", "g", "alt+<"}, "first (oldest loaded) item", "Navigation"},
	{ActBottom, []string{"end", "G", "alt+>"}, "last (newest) item", "Navigation"},
	{ActOpen, []string{"enter", "l", "right"}, "open conversation / message info", "Navigation"},
	{ActBack, []string{"esc", "h", "left"}, "back to the conversation list", "Navigation"},
	{ActNextPane, []string{"tab"}, "next pane (list → messages → input)", "Navigation"},
	{ActPrevPane, []string{"shift+tab"}, "previous pane", "Navigation"},
	{ActNextUnread, []string{"u"}, "next conversation with unread messages", "Navigation"},
	{ActScrollUp, []string{"ctrl+up", "alt+k"}, "scroll messages up (also in the input)", "Navigation"},
	{ActScrollDown, []string{"ctrl+down", "alt+j"}, "scroll messages down (also in the input)", "Navigation"},

	{ActCompose, []string{"i", "a"}, "write a message (focus the input)", "Messages"},
	{ActSend, []string{"enter"}, "send the message (in the input)", "Messages"},
	{ActNewline, []string{"alt+enter", "ctrl+j", "shift+enter"}, "new line in the input", "Messages"},
	{ActCancel, []string{"esc"}, "leave the input / cancel a reply or dialog", "Messages"},
	{ActReply, []string{"r"}, "reply to the selected message", "Messages"},
	{ActInfo, []string{"I"}, "message info (per-member delivery)", "Messages"},
	{ActSearch, []string{"/"}, "search this conversation (everywhere from the list)", "Messages"},
	{ActSearchAll, []string{"S"}, "search all conversations", "Messages"},
	{ActAttach, []string{"ctrl+o", "f"}, "send a file (path prompt; ctrl+o also in the input)", "Files"},
	{ActSave, []string{"s"}, "save the selected file", "Files"},
	{ActOpenFile, []string{"o"}, "open the selected file (downloads it to a temp dir)", "Files"},

	{ActNewChat, []string{"n"}, "new chat with a user name", "Conversations"},
	{ActNewGroup, []string{"N"}, "create a group", "Conversations"},
	{ActAddMember, []string{"+"}, "add members to this group", "Conversations"},
	{ActRemove, []string{"-"}, "remove members from this group", "Conversations"},
	{ActLeave, []string{"L"}, "leave this group", "Conversations"},
	{ActRename, []string{"R"}, "rename this group", "Conversations"},
	{ActMute, []string{"m"}, "mute / unmute notifications", "Conversations"},

	{ActSafety, []string{"v"}, "safety number (digits + QR code)", "Trust"},
	{ActVerify, []string{"V"}, "mark verified (in the safety-number view)", "Trust"},
	{ActAccept, []string{"T"}, "accept a changed identity key", "Trust"},

	{ActHelp, []string{"?"}, "this help", "General"},
	{ActQuit, []string{"q"}, "quit", "General"},
	{ActForceQuit, []string{"ctrl+c"}, "quit (anywhere, also in the input)", "General"},
}

// KeyMap maps actions to key bindings.
type KeyMap struct {
	bindings map[Action]key.Binding
	order    []binding
}

// DefaultKeyMap returns the default bindings.
func DefaultKeyMap() KeyMap {
	km := KeyMap{bindings: map[Action]key.Binding{}}
	for _, b := range defaultBindings {
		km.order = append(km.order, b)
		km.bindings[b.act] = key.NewBinding(key.WithKeys(b.keys...), key.WithHelp(strings.Join(b.keys, "/"), b.help))
	}
	return km
}

// Override replaces the keys of act. An empty list disables the action.
func (km *KeyMap) Override(act Action, keys []string) error {
	i := slices.IndexFunc(km.order, func(b binding) bool { return b.act == act })
	if i < 0 {
		return fmt.Errorf("unknown action %q (see the help view or docs/tui.md for the names)", act)
	}
	for _, k := range keys {
		if strings.TrimSpace(k) == "" || len(k) > 32 {
			return fmt.Errorf("action %s: bad key %q", act, k)
		}
	}
	km.order[i].keys = slices.Clone(keys)
	b := key.NewBinding(key.WithKeys(keys...), key.WithHelp(strings.Join(keys, "/"), km.order[i].help))
	if len(keys) == 0 {
		b.SetEnabled(false)
	}
	km.bindings[act] = b
	return nil
}

// Is reports whether msg is one of act's keys.
func (km KeyMap) Is(msg fmt.Stringer, act Action) bool {
	b, ok := km.bindings[act]
	return ok && key.Matches(msg, b)
}

// Keys returns act's keys.
func (km KeyMap) Keys(act Action) []string {
	for _, b := range km.order {
		if b.act == act {
			return b.keys
		}
	}
	return nil
}

// First returns act's first key, for hints ("" when disabled).
func (km KeyMap) First(act Action) string {
	if ks := km.Keys(act); len(ks) > 0 {
		return ks[0]
	}
	return ""
}

// HelpLines lists every binding, grouped, for the help view.
func (km KeyMap) HelpLines() []string {
	var out []string
	group := ""
	for _, b := range km.order {
		if b.group != group {
			if group != "" {
				out = append(out, "")
			}
			group = b.group
			out = append(out, "# "+group)
		}
		keys := strings.Join(b.keys, " ")
		if keys == "" {
			keys = "(disabled)"
		}
		out = append(out, fmt.Sprintf("  %-28s %s", keys, b.help))
	}
	return out
}

// Actions returns every action name.
func Actions() []Action {
	out := make([]Action, len(defaultBindings))
	for i, b := range defaultBindings {
		out[i] = b.act
	}
	return out
}
