package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hushchat/hush/client"
)

// Files: `hush send --file` and `hush save`. The client core does the
// work (client.SendFile, client.SaveAttachment); this file adds the
// command line's rules: the caption, progress on a terminal, and the
// destination of a saved file.

// captionArg is the optional caption of a file: the remaining words, or
// stdin for "-".
func captionArg(cmd string, words []string, stdin io.Reader) (string, error) {
	if len(words) == 0 {
		return "", nil
	}
	return textArg(cmd, words, stdin)
}

// checkSendFile refuses a path that cannot be sent before anything
// connects.
func checkSendFile(cmd, path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, iofs.ErrNotExist) {
		return usagef(cmd, "--file %s: no such file", clip(path))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if !st.Mode().IsRegular() {
		return usagef(cmd, "--file %s is not a regular file", clip(path))
	}
	return nil
}

// sendFile uploads path and sends it to to, or to group gid when to is
// empty, showing progress on a terminal.
func (a *app) sendFile(ctx context.Context, c *client.Client, to string, gid client.GroupID, path, caption string, opts []client.SendOption) (client.MessageID, error) {
	fopts := []client.FileOption{client.WithCaption(caption), client.WithMessageOptions(opts...)}
	pl := a.progress("uploading", filepath.Base(path))
	if pl != nil {
		fopts = append(fopts, client.WithProgress(pl.update))
	}
	var id client.MessageID
	var err error
	if to != "" {
		id, err = c.SendFile(ctx, to, path, fopts...)
	} else {
		id, err = c.SendGroupFile(ctx, gid, path, fopts...)
	}
	pl.finish()
	if err != nil && ctx.Err() != nil {
		return id, fmt.Errorf("interrupted: the file was not sent (%w)", err)
	}
	return id, err
}

var cmdSave = &command{
	name:    "save",
	args:    "[--out PATH] [--force] [--json] ID",
	summary: "download, verify and decrypt the file of a received message",
	detail: `ID is the message id shown with the file (the "id" of its "attachment" in
--json event lines), or SENDER/ID when two senders used the same id.

The file is downloaded into a hidden part file next to the destination,
verified (its MAC and digest must match the key and digest in the
encrypted message) and only then decrypted into place. A damaged,
truncated or tampered file is refused and nothing is saved. An interrupted
download resumes where it stopped when save runs again with the same
destination.

--out names the file, or a directory to save into under the sender's file
name (default: the current directory). An existing file is not replaced
unless --force is given. Prints the saved path (JSON with --json).
Progress is shown on stderr when it is a terminal.`,
	run: runSave,
}

func runSave(ctx context.Context, a *app, args []string) error {
	fs := a.flags()
	out := fs.String("out", ".", "save to `PATH` (a file, or a directory to save into)")
	force := fs.Bool("force", false, "replace an existing file")
	asJSON := fs.Bool("json", false, "print {\"id\",\"path\",\"name\",\"size\",\"content_type\"}")
	pos, err := fs.parse(args, false)
	if err != nil {
		return err
	}
	if err := fs.want(pos, 1, 1, "message ID"); err != nil {
		return err
	}
	ref, err := client.ParseMessageRef(pos[0])
	if err != nil {
		return usagef(fs.cmd.name, "%v", err)
	}
	if *out == "" {
		return usagef(fs.cmd.name, "--out is empty")
	}
	// Saving needs the key server (a token) and the media store, not the
	// relay connection.
	c, err := a.open(ctx, openOptions{})
	if err != nil {
		return err
	}
	defer closeClient(c)
	m, err := c.FindMessage(ctx, ref)
	if err != nil {
		return err
	}
	if m.Attachment == nil {
		return fmt.Errorf("message %s: %w", ref, client.ErrNoAttachment)
	}
	pl := a.progress("downloading", client.SafeFileName(m.Attachment))
	o := client.SaveOptions{Overwrite: *force}
	if pl != nil {
		o.Progress = pl.update
	}
	path, err := c.DownloadAttachment(ctx, m.Attachment, *out, o)
	pl.finish()
	switch {
	case err == nil:
	case errors.Is(err, iofs.ErrExist):
		return fmt.Errorf("%w; use --force to replace it, or --out to choose another path", err)
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted: %w; run save again to resume the download", err)
	default:
		return err
	}
	if *asJSON {
		return writeJSON(a.stdout, struct {
			ID          string `json:"id"`
			Path        string `json:"path"`
			Name        string `json:"name,omitempty"`
			Size        uint64 `json:"size"`
			ContentType string `json:"content_type,omitempty"`
		}{m.ID.String(), path, m.Attachment.FileName, m.Attachment.Size, m.Attachment.ContentType})
	}
	_, err = fmt.Fprintln(a.stdout, path)
	return err
}

// progress returns a progress line on stderr when stderr is a terminal,
// else nil (a nil *progressLine ignores finish).
func (a *app) progress(verb, name string) *progressLine {
	f, ok := a.stderr.(*os.File)
	if !ok {
		return nil
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return newProgressLine(f, verb, name)
}

// progressLine redraws one line: "uploading NAME: 42% (4.2 MiB of
// 10.0 MiB)", at most every 100 ms or percent.
type progressLine struct {
	mu      sync.Mutex
	w       io.Writer
	prefix  string
	last    time.Time
	lastPct int64
	shown   bool
}

func newProgressLine(w io.Writer, verb, name string) *progressLine {
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return -1 // no terminal control sequences from a file name
		}
		return r
	}, name)
	if len(name) > 60 {
		name = "…" + name[len(name)-59:]
	}
	return &progressLine{w: w, prefix: verb + " " + name, lastPct: -1}
}

func (p *progressLine) update(done, total int64) {
	if total <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pct := done * 100 / total
	now := time.Now()
	if pct == p.lastPct || (now.Sub(p.last) < 100*time.Millisecond && done < total) {
		return
	}
	p.last, p.lastPct, p.shown = now, pct, true
	fmt.Fprintf(p.w, "\r%s: %3d%% (%s of %s)\x1b[K", p.prefix, pct, humanSize(uint64(done)), humanSize(uint64(total)))
}

// finish ends the line.
func (p *progressLine) finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprintln(p.w)
		p.shown = false
	}
}
