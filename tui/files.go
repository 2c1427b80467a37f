package tui

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/hushchat/hush/client"
)

// Files: /file PATH (or the attach key's prompt) uploads and sends a file
// with a progress bar; on a received file the save key downloads it to a
// path (progress bar too) and the open key downloads it to a temporary
// directory and runs the open command. Transfers run in commands with
// their own context (an upload may outlast callTimeout); their progress
// reaches the UI through a channel read by a re-armed command.

// transfer is an upload or download in progress.
type transfer struct {
	id          int
	name        string
	up          bool
	done, total int64
}

type progressMsg struct {
	id          int
	done, total int64
	ch          <-chan [2]int64
}

type transferDoneMsg struct {
	id   int
	up   bool
	conv client.ConvID
	msg  client.MessageID
	path string
	open bool
	err  error
}

func watchProgress(id int, ch <-chan [2]int64) tea.Cmd {
	return func() tea.Msg {
		p, ok := <-ch
		if !ok {
			return nil
		}
		return progressMsg{id: id, done: p[0], total: p[1], ch: ch}
	}
}

// newTransfer registers a transfer and returns its progress callback
// (which never blocks: a slow UI sees fewer updates) and channel.
func (m *Model) newTransfer(name string, up bool) (*transfer, client.Progress, chan [2]int64) {
	m.nextTransfer++
	tr := &transfer{id: m.nextTransfer, name: name, up: up}
	m.transfers = append(m.transfers, tr)
	ch := make(chan [2]int64, 1)
	progress := func(done, total int64) {
		select {
		case ch <- [2]int64{done, total}:
		default:
			select { // replace the unread update with the newer one
			case <-ch:
			default:
			}
			select {
			case ch <- [2]int64{done, total}:
			default:
			}
		}
	}
	return tr, progress, ch
}

func (m *Model) onProgress(msg progressMsg) tea.Cmd {
	for _, tr := range m.transfers {
		if tr.id == msg.id {
			tr.done, tr.total = msg.done, msg.total
		}
	}
	return watchProgress(msg.id, msg.ch)
}

func (m *Model) endTransfer(id int) {
	for i, tr := range m.transfers {
		if tr.id == id {
			m.transfers = append(m.transfers[:i], m.transfers[i+1:]...)
			return
		}
	}
}

func (m *Model) onTransferDone(msg transferDoneMsg) tea.Cmd {
	m.endTransfer(msg.id)
	switch {
	case msg.err != nil:
		m.setFlash(msg.err.Error(), true)
		return m.loadContacts()
	case msg.up:
		if msg.conv == m.chat.conv {
			return tea.Batch(m.refreshMessages([]client.MessageID{msg.msg}), m.reloadConvs())
		}
		return m.reloadConvs()
	case msg.open:
		return m.runOpen(msg.path)
	}
	m.setFlash("saved "+msg.path, false)
	return nil
}

// expandPath resolves ~ and makes the path absolute.
func expandPath(p string) (string, error) {
	p = strings.TrimSpace(p)
	if p == "" {
		return "", errors.New("no path given")
	}
	if p == "~" || strings.HasPrefix(p, "~/") {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		p = filepath.Join(h, strings.TrimPrefix(p, "~"))
	}
	return filepath.Abs(p)
}

// sendFile uploads path to the open conversation, as a reply when
// quote is set.
func (m *Model) sendFile(path, caption string) tea.Cmd {
	if !m.inputAllowed() {
		m.setFlash("sending is blocked: "+m.blockedReason(), true)
		return nil
	}
	abs, err := expandPath(path)
	if err != nil {
		m.setFlash("send file: "+err.Error(), true)
		return nil
	}
	st, err := os.Stat(abs)
	if err != nil {
		m.setFlash("send file: "+err.Error(), true)
		return nil
	}
	if st.IsDir() {
		m.setFlash("send file: "+abs+" is a directory", true)
		return nil
	}
	opts := []client.FileOption{}
	if caption != "" {
		opts = append(opts, client.WithCaption(caption))
	}
	if r := m.replyTo; r != nil {
		qt := messageText(r)
		if len(qt) > maxQuote {
			qt = strings.ToValidUTF8(qt[:maxQuote], "")
		}
		opts = append(opts, client.WithMessageOptions(client.WithQuote(client.Quote{ID: r.ID, Author: r.Sender, Text: qt})))
		m.replyTo = nil
	}
	tr, progress, ch := m.newTransfer(filepath.Base(abs), true)
	opts = append(opts, client.WithProgress(progress))
	c, conv, parent := m.c, m.chat.conv, m.ctx
	id := tr.id
	upload := func() tea.Msg {
		defer close(ch)
		var mid client.MessageID
		var err error
		if gid, ok := conv.Group(); ok {
			mid, err = c.SendGroupFile(parent, gid, abs, opts...)
		} else {
			mid, err = c.SendFile(parent, conv.Peer(), abs, opts...)
		}
		if err != nil {
			err = fmt.Errorf("send %s: %w", filepath.Base(abs), err)
		}
		return transferDoneMsg{id: id, up: true, conv: conv, msg: mid, err: err}
	}
	return tea.Batch(watchProgress(id, ch), upload)
}

// download fetches a's file to dest (a file or a directory).
func (m *Model) download(a client.Attachment, dest string, open bool) tea.Cmd {
	tr, progress, ch := m.newTransfer(client.SafeFileName(&a), false)
	c, parent, id := m.c, m.ctx, tr.id
	get := func() tea.Msg {
		defer close(ch)
		path, err := c.DownloadAttachment(parent, &a, dest, client.SaveOptions{Progress: progress})
		return transferDoneMsg{id: id, path: path, open: open, err: err}
	}
	return tea.Batch(watchProgress(id, ch), get)
}

func (m *Model) selectedAttachment() (*client.Message, bool) {
	sel := m.selectedMessage()
	if sel == nil || sel.Kind != client.KindAttachment || sel.Attachment == nil {
		m.setFlash("select a file message first (↑/↓)", true)
		return nil, false
	}
	return sel, true
}

// downloadDir is where the save prompt proposes to save.
func downloadDir() string {
	if d := os.Getenv("XDG_DOWNLOAD_DIR"); d != "" {
		return d
	}
	if h, err := os.UserHomeDir(); err == nil {
		if st, err := os.Stat(filepath.Join(h, "Downloads")); err == nil && st.IsDir() {
			return filepath.Join(h, "Downloads")
		}
	}
	if wd, err := os.Getwd(); err == nil {
		return wd
	}
	return "."
}

func newFileDialog(m *Model) *formDialog {
	return newForm(m, "Send a file to "+m.chat.name, "The file is encrypted on this machine; the server stores only ciphertext. ~ means your home directory.",
		[]string{"Path", "Caption (optional)"}, func(m *Model, v []string) (tea.Cmd, error) {
			if v[0] == "" {
				return nil, errors.New("type the path of the file")
			}
			return m.sendFile(v[0], v[1]), nil
		})
}

func newSaveDialog(m *Model, a client.Attachment) *formDialog {
	d := newForm(m, "Save "+client.SafeFileName(&a), "The file is downloaded, checked and decrypted; nothing is written if it was tampered with. An existing file is not replaced.",
		[]string{"Save to"}, func(m *Model, v []string) (tea.Cmd, error) {
			dest, err := expandPath(v[0])
			if err != nil {
				return nil, err
			}
			return m.download(a, dest, false), nil
		})
	d.fields[0].SetValue(filepath.Join(downloadDir(), client.SafeFileName(&a)))
	d.fields[0].CursorEnd()
	return d
}

// openFile downloads the selected file to a private temporary directory
// and opens it with the open command.
func (m *Model) openFile(a client.Attachment) tea.Cmd {
	dir, err := os.MkdirTemp("", "hush-open-")
	if err != nil {
		m.setFlash("open: "+err.Error(), true)
		return nil
	}
	return m.download(a, dir, true)
}

func (m *Model) runOpen(path string) tea.Cmd {
	argv := m.cfg.OpenCommand
	if len(argv) == 0 {
		argv = []string{"xdg-open", "{path}"}
	}
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = strings.ReplaceAll(a, "{path}", path)
	}
	parent := m.ctx
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(parent, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if len(msg) > 100 {
				msg = msg[:100]
			}
			return doneMsg{err: fmt.Errorf("open %s with %s: %v %s (saved at %s)", filepath.Base(path), args[0], err, msg, path)}
		}
		return doneMsg{what: "opened " + filepath.Base(path)}
	}
}

// transferLines draws the progress bars.
func (m *Model) transferLines(w int) []string {
	var out []string
	for _, tr := range m.transfers {
		arrow := "↓"
		if tr.up {
			arrow = "↑"
		}
		pct := 0
		if tr.total > 0 {
			pct = int(tr.done * 100 / tr.total)
		}
		info := fmt.Sprintf(" %3d%% %s/%s", pct, humanSize(uint64(tr.done)), humanSize(uint64(tr.total)))
		barW := max(5, min(30, w-lenCells(tr.name)-lenCells(info)-6))
		fill := barW * pct / 100
		bar := m.st.online.Render(strings.Repeat("█", fill)) + m.st.dim.Render(strings.Repeat("░", barW-fill))
		out = append(out, fit(" "+arrow+" "+tr.name+" "+bar+info, w))
	}
	return out
}

func lenCells(s string) int { return len([]rune(s)) }
