package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hushchat/hush/protocol"
)

// errHelpShown: --help was asked for and printed; exit 0.
var errHelpShown = errors.New("help shown")

// usageError: the command line was wrong (exit 2).
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf("%s: %s", cmd, fmt.Sprintf(format, args...))}
}

// flagSet is a command's flags.
type flagSet struct {
	*flag.FlagSet
	cmd *command
	a   *app
}

// flags returns the flag set of the command being run.
func (a *app) flags() *flagSet {
	fs := flag.NewFlagSet(a.cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flagSet{FlagSet: fs, cmd: a.cmd, a: a}
}

// parse parses args and returns the positional arguments. Flags may come
// anywhere among them unless stopAtFirst is set (then everything after
// the first positional argument is positional: `hush send bob -x` sends
// "-x"). "--" ends the flags in both cases.
func (fs *flagSet) parse(args []string, stopAtFirst bool) ([]string, error) {
	var pos []string
	for {
		before := args
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.printHelp(fs.a.stdout)
				return nil, errHelpShown
			}
			return nil, &usageError{cmd: fs.cmd.name, err: fmt.Errorf("%s: %w", fs.cmd.name, err)}
		}
		args = fs.Args()
		consumed := len(before) - len(args)
		if consumed > 0 && before[consumed-1] == "--" {
			return append(pos, args...), nil
		}
		if len(args) == 0 {
			return pos, nil
		}
		if stopAtFirst {
			return append(pos, args...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (fs *flagSet) printHelp(w io.Writer) {
	c := fs.cmd
	fmt.Fprintf(w, "Usage: hush %s %s\n\n%s\n", c.name, c.args, upperFirst(c.summary)+".")
	if c.detail != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.detail))
	}
	var b bytes.Buffer
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	if b.Len() > 0 {
		fmt.Fprintf(w, "\nFlags:\n%s", strings.ReplaceAll(b.String(), "  -", "  --"))
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// want checks the number of positional arguments.
func (fs *flagSet) want(pos []string, min, max int, what string) error {
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		if len(pos) < min {
			return usagef(fs.cmd.name, "missing %s", what)
		}
		return usagef(fs.cmd.name, "unexpected argument %q", clip(pos[max]))
	}
	return nil
}

// accountName checks and normalises an account name from the command
// line.
func accountName(cmd, s string) (string, error) {
	n, err := protocol.NormalizeAccountName(s)
	if err != nil {
		return "", usagef(cmd, "account name %q: %v", clip(s), err)
	}
	return n, nil
}

// positiveDuration checks a duration flag.
func positiveDuration(cmd, flagName string, d time.Duration) error {
	if d <= 0 {
		return usagef(cmd, "--%s must be positive, not %s", flagName, d)
	}
	return nil
}

// trackedWriter remembers that stdout's reader went away (EPIPE), so the
// CLI can end quietly, and serialises writers (listen writes event lines
// and request answers from different goroutines).
type trackedWriter struct {
	mu   sync.Mutex
	w    io.Writer
	pipe bool
}

func (t *trackedWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pipe {
		return 0, syscall.EPIPE
	}
	n, err := t.w.Write(p)
	if err != nil && errors.Is(err, syscall.EPIPE) {
		t.pipe = true
	}
	return n, err
}

func (t *trackedWriter) broken() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pipe
}
