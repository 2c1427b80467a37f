package tui

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"charm.land/lipgloss/v2"
	"github.com/BurntSushi/toml"
)

// ConfigFileName is the TUI config file's name, in the profile directory
// or in $XDG_CONFIG_HOME/hush.
const ConfigFileName = "tui.toml"

// maxConfigSize bounds the config file we read.
const maxConfigSize = 1 << 20

// Config is the TUI's config file (TOML).
type Config struct {
	// Keys overrides key bindings: action name → keys.
	Keys map[string][]string `toml:"keys"`
	// Colors overrides colours: colour name → "#rrggbb" or an ANSI number.
	Colors map[string]string `toml:"colors"`
	// Bell rings the terminal bell for a new message in an unfocused,
	// unmuted conversation (default true).
	Bell *bool `toml:"bell"`
	// NotifyCommand runs for a new message in an unfocused, unmuted
	// conversation; {from}, {conv} and {text} in its arguments are
	// replaced.
	NotifyCommand []string `toml:"notify_command"`
	// OpenCommand opens a downloaded file; {path} is replaced (default
	// xdg-open {path}).
	OpenCommand []string `toml:"open_command"`
	// ServerURL prefills the register screen.
	ServerURL string `toml:"server_url"`
}

// configPaths lists where the config is looked for, in order.
func configPaths(opts Options) []string {
	if opts.ConfigPath != "" {
		return []string{opts.ConfigPath}
	}
	var out []string
	if opts.Home != "" {
		out = append(out, filepath.Join(opts.Home, ConfigFileName))
	}
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		out = append(out, filepath.Join(x, "hush", ConfigFileName))
	} else if h, err := os.UserHomeDir(); err == nil {
		out = append(out, filepath.Join(h, ".config", "hush", ConfigFileName))
	}
	return out
}

// LoadConfig reads the config file for opts: Options.ConfigPath (which
// must exist), else the first of the profile's tui.toml and
// $XDG_CONFIG_HOME/hush/tui.toml that exists, else the defaults. It
// returns the path it read ("" for none).
func LoadConfig(opts Options) (Config, string, error) {
	for i, p := range configPaths(opts) {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) && (opts.ConfigPath == "" || i > 0) {
			continue
		}
		if err != nil {
			return Config{}, "", fmt.Errorf("tui config: %w", err)
		}
		defer f.Close()
		data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
		if err != nil {
			return Config{}, "", fmt.Errorf("tui config %s: %w", p, err)
		}
		if len(data) > maxConfigSize {
			return Config{}, "", fmt.Errorf("tui config %s: larger than %d bytes", p, maxConfigSize)
		}
		cfg, err := ParseConfig(data)
		if err != nil {
			return Config{}, "", fmt.Errorf("tui config %s: %w", p, err)
		}
		return cfg, p, nil
	}
	return Config{}, "", nil
}

// ParseConfig decodes and checks a config file: unknown settings,
// actions, colour names or malformed colours are errors.
func ParseConfig(data []byte) (Config, error) {
	var cfg Config
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		return Config{}, err
	}
	if un := md.Undecoded(); len(un) > 0 {
		var names []string
		for _, k := range un {
			names = append(names, k.String())
		}
		return Config{}, fmt.Errorf("unknown setting(s): %s", strings.Join(names, ", "))
	}
	km := DefaultKeyMap()
	if err := applyKeys(&km, cfg.Keys); err != nil {
		return Config{}, err
	}
	if _, err := buildTheme(cfg.Colors); err != nil {
		return Config{}, err
	}
	if len(cfg.NotifyCommand) > 0 && cfg.NotifyCommand[0] == "" {
		return Config{}, errors.New("notify_command: the program name is empty")
	}
	if len(cfg.OpenCommand) > 0 && cfg.OpenCommand[0] == "" {
		return Config{}, errors.New("open_command: the program name is empty")
	}
	return cfg, nil
}

func applyKeys(km *KeyMap, keys map[string][]string) error {
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := km.Override(Action(name), keys[name]); err != nil {
			return fmt.Errorf("keys: %w", err)
		}
	}
	return nil
}

// Theme holds the colours, by name (the keys of [colors]).
type Theme struct {
	Accent, Text, Dim, Own, Peer, Tick, Read, Error, Warning, Online, Border,
	SelectBg, StatusFg, StatusBg, BannerFg, BannerBg color.Color
}

var defaultColors = map[string]string{
	"accent":    "#a78bfa",
	"text":      "#e5e7eb",
	"dim":       "#9ca3af",
	"own":       "#34d399",
	"peer":      "#60a5fa",
	"tick":      "#9ca3af",
	"read":      "#3b82f6",
	"error":     "#f87171",
	"warning":   "#fbbf24",
	"online":    "#22c55e",
	"border":    "#4b5563",
	"select_bg": "#374151",
	"status_fg": "#e5e7eb",
	"status_bg": "#1f2937",
	"banner_fg": "#111827",
	"banner_bg": "#fbbf24",
}

// ColorNames lists the colour names the config accepts.
func ColorNames() []string {
	out := make([]string, 0, len(defaultColors))
	for k := range defaultColors {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func parseColor(name, s string) (color.Color, error) {
	s = strings.TrimSpace(s)
	ok := false
	if strings.HasPrefix(s, "#") && (len(s) == 7 || len(s) == 4) {
		ok = strings.Trim(strings.ToLower(s[1:]), "0123456789abcdef") == ""
	} else if s != "" && len(s) <= 3 && strings.Trim(s, "0123456789") == "" {
		var n int
		fmt.Sscan(s, &n)
		ok = n <= 255
	}
	if !ok {
		return nil, fmt.Errorf("colors.%s: %q is not a colour (want #rrggbb, #rgb or 0-255)", name, s)
	}
	return lipgloss.Color(s), nil
}

func buildTheme(over map[string]string) (Theme, error) {
	vals := map[string]string{}
	for k, v := range defaultColors {
		vals[k] = v
	}
	for k, v := range over {
		if _, ok := defaultColors[k]; !ok {
			return Theme{}, fmt.Errorf("colors: unknown colour %q (known: %s)", k, strings.Join(ColorNames(), ", "))
		}
		vals[k] = v
	}
	c := map[string]color.Color{}
	for k, v := range vals {
		col, err := parseColor(k, v)
		if err != nil {
			return Theme{}, err
		}
		c[k] = col
	}
	return Theme{Accent: c["accent"], Text: c["text"], Dim: c["dim"], Own: c["own"], Peer: c["peer"], Tick: c["tick"],
		Read: c["read"], Error: c["error"], Warning: c["warning"], Online: c["online"], Border: c["border"],
		SelectBg: c["select_bg"], StatusFg: c["status_fg"], StatusBg: c["status_bg"], BannerFg: c["banner_fg"],
		BannerBg: c["banner_bg"]}, nil
}

// styles are the lipgloss styles derived from a Theme.
type styles struct {
	accent, text, dim, own, peer, tick, read, err, warn, online, border, selected,
	status, banner, title, system lipgloss.Style
}

func newStyles(t Theme) styles {
	s := lipgloss.NewStyle
	return styles{
		accent:   s().Foreground(t.Accent).Bold(true),
		text:     s().Foreground(t.Text),
		dim:      s().Foreground(t.Dim),
		own:      s().Foreground(t.Own).Bold(true),
		peer:     s().Foreground(t.Peer).Bold(true),
		tick:     s().Foreground(t.Tick),
		read:     s().Foreground(t.Read).Bold(true),
		err:      s().Foreground(t.Error),
		warn:     s().Foreground(t.Warning),
		online:   s().Foreground(t.Online),
		border:   s().Foreground(t.Border),
		selected: s().Background(t.SelectBg),
		status:   s().Foreground(t.StatusFg).Background(t.StatusBg),
		banner:   s().Foreground(t.BannerFg).Background(t.BannerBg).Bold(true),
		title:    s().Foreground(t.Accent).Bold(true),
		system:   s().Foreground(t.Dim).Italic(true),
	}
}
