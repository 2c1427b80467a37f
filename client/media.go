package client

// Attachments (files and images).
//
// A file never travels over the relay's WebSocket. Sending one:
//
//  1. the plaintext is padded with zeros to a size bucket (Signal's rule:
//     the next power of 1.05, at least 541 bytes), so the stored object
//     reveals only a coarse size;
//  2. it is encrypted as a stream with a fresh random key
//     (crypto.EncryptAttachment: AES-256-CBC + HMAC-SHA256, SHA-256 digest
//     over the blob) and uploaded, still streaming, to an upload slot the
//     relay hands out (server/media/mediaclient); nothing is held whole in
//     memory and the media server only ever sees ciphertext;
//  3. an ordinary end-to-end message carries the pointer: object key,
//     key, digest, real and encrypted sizes, content type, file name,
//     caption and, for images, a small JPEG thumbnail and the dimensions.
//     A group file is uploaded once and the pointer goes to every member
//     in the one sender-key message.
//
// Receiving stores only the pointer. SaveAttachment downloads on demand,
// in one pass: the blob is hashed (MAC and digest) and decrypted as it
// arrives (crypto.AttachmentDecrypter, on two goroutines) into a
// temporary file beside the destination, which is renamed into place
// only once MAC, digest and padding verify. The ciphertext also goes to a
// part file, so an interrupted download resumes after the part file's
// length on the next call; only ciphertext is left behind. A tampered,
// truncated or wrongly keyed file is refused with ErrAttachmentCorrupt;
// its part file and the unverified temporary file are deleted. Memory use
// is constant in the file size.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/mediaclient"
)

// Progress reports a file transfer: done of total bytes of the encrypted
// file moved so far. It is called from the transfer's goroutines (for
// uploads, the HTTP transport's) and must be quick.
type Progress func(done, total int64)

// Attachment errors. Test with errors.Is.
var (
	// ErrNoMessage: no message with that id in this profile.
	ErrNoMessage = errors.New("no such message")
	// ErrAmbiguousMessage: several senders used the message id; name
	// the sender (MessageRef.Sender, "SENDER/ID").
	ErrAmbiguousMessage = errors.New("several messages have that id")
	// ErrNoAttachment: the message carries no file.
	ErrNoAttachment = errors.New("the message has no attachment")
	// ErrAttachmentCorrupt: the downloaded file failed verification
	// (MAC, digest, size or padding): it was damaged, truncated or
	// tampered with, or the key is wrong. Nothing was saved.
	ErrAttachmentCorrupt = errors.New("the attachment failed verification: it is damaged, truncated or was tampered with")
	// ErrAttachmentGone: the media server no longer has the file
	// (it keeps files for a retention period, 30 days by default).
	ErrAttachmentGone = errors.New("the attachment is no longer on the server")
	// ErrFileChanged: the file being sent shrank while it was read.
	ErrFileChanged = errors.New("the file changed while it was being sent")
)

// FileOption configures SendFile, SendGroupFile, SendReader,
// SendGroupReader, UploadFile and UploadAttachment.
type FileOption func(*fileOptions)

type fileOptions struct {
	caption     string
	name        string
	contentType string
	progress    Progress
	send        []SendOption
	noThumbnail bool
}

// WithCaption sets the text shown with the file.
func WithCaption(text string) FileOption { return func(o *fileOptions) { o.caption = text } }

// WithFileName sets the file name the recipient sees (default: the
// path's last element).
func WithFileName(name string) FileOption { return func(o *fileOptions) { o.name = name } }

// WithContentType sets the MIME type (default: sniffed from the first 512
// bytes with net/http.DetectContentType, the file name's extension
// deciding where sniffing finds only generic text or binary).
func WithContentType(ct string) FileOption { return func(o *fileOptions) { o.contentType = ct } }

// WithProgress reports the upload's progress.
func WithProgress(p Progress) FileOption { return func(o *fileOptions) { o.progress = p } }

// WithMessageOptions passes options (WithQuote) to the message that
// carries the file.
func WithMessageOptions(opts ...SendOption) FileOption {
	return func(o *fileOptions) { o.send = append(o.send, opts...) }
}

// WithoutThumbnail sends an image without a preview (dimensions are
// still sent).
func WithoutThumbnail() FileOption { return func(o *fileOptions) { o.noThumbnail = true } }

func fileOpts(opts []FileOption) fileOptions {
	var o fileOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// SendFile uploads the file at path, encrypted, and sends it to account
// to. It returns once the message is queued, like Send (WaitSent waits
// for the relay); the upload itself is done by then. Before uploading it
// checks what Send would refuse (unknown account, unaccepted identity
// change), so a refused message costs no upload.
func (c *Client) SendFile(ctx context.Context, to, path string, opts ...FileOption) (MessageID, error) {
	o := fileOpts(opts)
	to, err := c.checkFileRecipient(ctx, to, o)
	if err != nil {
		return MessageID{}, err
	}
	a, err := c.UploadFile(ctx, path, opts...)
	if err != nil {
		return MessageID{}, err
	}
	return c.Send(ctx, to, o.caption, append(o.send, WithAttachment(*a))...)
}

// SendGroupFile uploads the file at path once and sends it to every
// member of group id in one message.
func (c *Client) SendGroupFile(ctx context.Context, id GroupID, path string, opts ...FileOption) (MessageID, error) {
	o := fileOpts(opts)
	if err := c.checkFileGroup(ctx, id, o); err != nil {
		return MessageID{}, err
	}
	a, err := c.UploadFile(ctx, path, opts...)
	if err != nil {
		return MessageID{}, err
	}
	return c.SendGroup(ctx, id, o.caption, append(o.send, WithAttachment(*a))...)
}

// SendReader sends size bytes read from r as a file named name (for
// bots that make files in memory or stream them). contentType "" is
// sniffed. An image gets a thumbnail only if r is an io.ReadSeeker.
func (c *Client) SendReader(ctx context.Context, to string, r io.Reader, size int64, name, contentType string, opts ...FileOption) (MessageID, error) {
	o := fileOpts(opts)
	to, err := c.checkFileRecipient(ctx, to, o)
	if err != nil {
		return MessageID{}, err
	}
	a, err := c.UploadAttachment(ctx, r, size, name, contentType, opts...)
	if err != nil {
		return MessageID{}, err
	}
	return c.Send(ctx, to, o.caption, append(o.send, WithAttachment(*a))...)
}

// SendGroupReader is SendReader for a group.
func (c *Client) SendGroupReader(ctx context.Context, id GroupID, r io.Reader, size int64, name, contentType string, opts ...FileOption) (MessageID, error) {
	o := fileOpts(opts)
	if err := c.checkFileGroup(ctx, id, o); err != nil {
		return MessageID{}, err
	}
	a, err := c.UploadAttachment(ctx, r, size, name, contentType, opts...)
	if err != nil {
		return MessageID{}, err
	}
	return c.SendGroup(ctx, id, o.caption, append(o.send, WithAttachment(*a))...)
}

// checkFileRecipient refuses, before any upload, what Send would refuse.
func (c *Client) checkFileRecipient(ctx context.Context, to string, o fileOptions) (string, error) {
	a, _, err := c.account()
	if err != nil {
		return "", err
	}
	if err := checkCaption(o.caption); err != nil {
		return "", err
	}
	to, err = protocol.NormalizeAccountName(to)
	if err != nil {
		return "", fmt.Errorf("send file: %w", err)
	}
	if to == a.Name {
		return "", errors.New("send file: cannot send a message to your own account")
	}
	if _, err := c.checkAccounts(ctx, []string{to}); err != nil {
		return "", fmt.Errorf("send file: %w", err)
	}
	if err := c.checkTrust(ctx, []string{to}); err != nil {
		return "", err
	}
	return to, nil
}

// checkFileGroup refuses, before any upload, what SendGroup would refuse.
func (c *Client) checkFileGroup(ctx context.Context, id GroupID, o fileOptions) error {
	a, _, err := c.account()
	if err != nil {
		return err
	}
	if err := checkCaption(o.caption); err != nil {
		return err
	}
	g, err := c.Group(ctx, id)
	if err != nil {
		return fmt.Errorf("send file to group: %w", err)
	}
	if !g.Active {
		return fmt.Errorf("send file to group: %w", ErrNotMember)
	}
	var others []string
	for _, m := range g.Members {
		if m.Account != a.Name {
			others = append(others, m.Account)
		}
	}
	return c.checkTrust(ctx, others)
}

func checkCaption(s string) error {
	if len(s) > protocol.MaxTextLen {
		return fmt.Errorf("send file: %w", &protocol.LimitError{What: "caption length", Limit: protocol.MaxTextLen, Got: len(s)})
	}
	return nil
}

// UploadFile encrypts and uploads the file at path and returns the
// pointer to send (WithAttachment). The file is read twice at most for
// an image (its thumbnail) and once otherwise, never held in memory.
func (c *Client) UploadFile(ctx context.Context, path string, opts ...FileOption) (*Attachment, error) {
	o := fileOpts(opts)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("send file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("send file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("send file: %s is not a regular file", path)
	}
	if o.name == "" {
		o.name = filepath.Base(path)
	}
	return c.upload(ctx, f, st.Size(), o)
}

// UploadAttachment encrypts and uploads size bytes of r as a file named
// name and returns the pointer to send (WithAttachment). contentType ""
// is sniffed. If r is an io.ReadSeeker, an image gets a thumbnail (r is
// read from its current offset, then rewound to it).
func (c *Client) UploadAttachment(ctx context.Context, r io.Reader, size int64, name, contentType string, opts ...FileOption) (*Attachment, error) {
	o := fileOpts(opts)
	if o.name == "" {
		o.name = name
	}
	if o.contentType == "" {
		o.contentType = contentType
	}
	return c.upload(ctx, r, size, o)
}

// upload reads the head of r for sniffing and a thumbnail when it can,
// then streams the rest.
func (c *Client) upload(ctx context.Context, r io.Reader, size int64, o fileOptions) (*Attachment, error) {
	if size < 0 {
		return nil, fmt.Errorf("send file: negative size %d", size)
	}
	if _, _, err := c.account(); err != nil {
		return nil, err
	}
	a := &Attachment{FileName: cleanSendName(o.name), Size: uint64(size)}
	var src io.Reader
	var head []byte
	if rs, ok := r.(io.ReadSeeker); ok {
		start, err := rs.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, fmt.Errorf("send file: %w", err)
		}
		rewind := func() (io.Reader, error) {
			if _, err := rs.Seek(start, io.SeekStart); err != nil {
				return nil, fmt.Errorf("send file: rewind: %w", err)
			}
			return io.LimitReader(rs, size), nil
		}
		head = make([]byte, min(size, 512))
		if _, err := io.ReadFull(rs, head); err != nil {
			return nil, fmt.Errorf("send file: read: %w", err)
		}
		a.ContentType = o.contentType
		if a.ContentType == "" {
			a.ContentType = detectContentType(a.FileName, head)
		}
		if thumbnailTypes[mediaType(a.ContentType)] {
			r1, err := rewind()
			if err != nil {
				return nil, err
			}
			thumb, w, h, err := imageInfo(r1, rewind)
			if err != nil {
				return nil, err
			}
			a.Width, a.Height = w, h
			// The preview must leave room for the caption in one
			// message (protocol.MaxContentSize, also inside the copy
			// for this account's other devices).
			if !o.noThumbnail && len(thumb)+len(o.caption) <= protocol.MaxContentSize-16<<10 {
				a.Thumbnail = thumb
			}
		}
		if src, err = rewind(); err != nil {
			return nil, err
		}
	} else {
		// Not seekable: sniff from a prefix read ahead and put back.
		head = make([]byte, min(size, 512))
		n, err := io.ReadFull(r, head)
		if err != nil && !(errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) {
			return nil, fmt.Errorf("send file: read: %w", err)
		}
		head = head[:n]
		a.ContentType = o.contentType
		if a.ContentType == "" {
			a.ContentType = detectContentType(a.FileName, head)
		}
		src = io.MultiReader(bytes.NewReader(head), r)
	}
	if err := c.uploadBlob(ctx, src, size, a, o.progress); err != nil {
		return nil, fmt.Errorf("send file %q: %w", a.FileName, err)
	}
	return a, nil
}

// uploadBlob pads, encrypts and uploads exactly size bytes of src and
// fills a's object key, key, digest and encrypted size.
func (c *Client) uploadBlob(ctx context.Context, src io.Reader, size int64, a *Attachment, progress Progress) error {
	mc, ts, done, err := c.mediaClient()
	if err != nil {
		return err
	}
	defer done()
	padded := PaddedSize(size)
	slot, err := requestSlot(ctx, mc, ts, crypto.EncryptedSize(padded))
	var me *mediaclient.Error
	if errors.As(err, &me) && me.Code == mediaapi.CodeTooLarge && padded > size && me.Limit >= crypto.EncryptedSize(size) {
		// The padding alone pushed the file over the server's limit:
		// pad less rather than refuse a file that fits.
		padded = max(size, maxPlainFor(me.Limit))
		slot, err = requestSlot(ctx, mc, ts, crypto.EncryptedSize(padded))
	}
	if errors.As(err, &me) && me.Code == mediaapi.CodeTooLarge && me.Limit > 0 {
		return fmt.Errorf("the file is %d bytes; this server takes files up to about %d bytes: %w", size, maxPlainFor(me.Limit), err)
	}
	if err != nil {
		return err
	}
	key, err := crypto.NewAttachmentKey()
	if err != nil {
		return err
	}
	body := io.MultiReader(&exactReader{r: src, left: size, size: size}, &zeroReader{left: padded - size})
	enc, err := crypto.EncryptAttachment(body, key)
	if err != nil {
		return err
	}
	if err := mc.Put(ctx, slot, enc, mediaclient.Progress(progress)); err != nil {
		enc.Close() // stop its cipher goroutine before src is closed
		return err
	}
	digest, err := enc.Digest()
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	a.ObjectKey, a.Key, a.Digest, a.EncryptedSize = slot.ObjectKey, key, digest, uint64(slot.Size)
	return nil
}

// requestSlot asks for an upload slot, logging in again once if the
// relay says the token expired.
func requestSlot(ctx context.Context, mc *mediaclient.Client, ts *mediaToken, size int64) (mediaapi.Slot, error) {
	s, err := mc.RequestSlot(ctx, size)
	if ts.retryAuth(err) {
		s, err = mc.RequestSlot(ctx, size)
	}
	return s, err
}

// PaddedSize is the plaintext size an attachment of n bytes is padded to
// before encryption: Signal's buckets, max(541, ⌊1.05^⌈log₁.₀₅ n⌉⌋), so
// the stored object reveals the size only to within 5%.
func PaddedSize(n int64) int64 {
	if n <= 541 {
		return 541
	}
	p := int64(math.Floor(math.Pow(1.05, math.Ceil(math.Log(float64(n))/math.Log(1.05)))))
	return max(p, n) // float rounding never pads below the size
}

// maxPlainFor is the largest plaintext whose blob fits limit bytes.
func maxPlainFor(limit int64) int64 {
	const overhead = 16 + 32 // IV + MAC
	blocks := (limit - overhead) / 16
	if blocks < 1 {
		return 0
	}
	// blocks·16 bytes hold blocks·16−1 plaintext bytes (PKCS#7 pads ≥ 1).
	return blocks*16 - 1
}

// exactReader yields exactly size bytes of r; a shorter r is
// ErrFileChanged (a longer one is cut: what was measured is sent).
type exactReader struct {
	r          io.Reader
	left, size int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("%w: it ended after %d of %d bytes", ErrFileChanged, e.size-e.left, e.size)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// zeroReader yields left zero bytes (the padding).
type zeroReader struct{ left int64 }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > z.left {
		p = p[:z.left]
	}
	clear(p)
	z.left -= int64(len(p))
	return len(p), nil
}

// detectContentType sniffs head, letting the file name's extension decide
// where sniffing only finds generic text, binary or a zip container
// (office documents, jars…).
func detectContentType(name string, head []byte) string {
	sniffed := http.DetectContentType(head)
	byExt := mime.TypeByExtension(strings.ToLower(filepath.Ext(name)))
	switch mediaType(sniffed) {
	case "application/octet-stream", "text/plain", "application/zip":
		if byExt != "" {
			return byExt
		}
	}
	return sniffed
}

func mediaType(ct string) string {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return strings.ToLower(strings.TrimSpace(ct))
	}
	return mt
}

// cleanSendName keeps the last path element of name, without control
// characters, within protocol.MaxFileNameLen bytes.
func cleanSendName(name string) string {
	name = strings.ReplaceAll(name, `\`, "/")
	name = path.Base(name)
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, name)
	if name == "." || name == "/" || name == ".." {
		return ""
	}
	return truncateName(name, protocol.MaxFileNameLen)
}

// truncateName shortens name to at most n bytes, keeping its extension
// (if short) and whole UTF-8 characters.
func truncateName(name string, n int) string {
	if len(name) <= n {
		return name
	}
	ext := filepath.Ext(name)
	if len(ext) > 16 || len(ext) >= n {
		ext = ""
	}
	stem := name[:len(name)-len(ext)]
	cut := n - len(ext)
	for cut > 0 && !utf8.RuneStart(stem[cut]) {
		cut--
	}
	return stem[:cut] + ext
}

// SafeFileName is the name to save an attachment under: the sender's
// file name reduced to one harmless path element (no directories, no
// leading dots, no control characters, at most 200 bytes), or
// "attachment" with an extension for its content type.
func SafeFileName(a *Attachment) string {
	name := cleanSendName(a.FileName)
	name = strings.Map(func(r rune) rune {
		switch r {
		case '/', '\\', ':', '*', '?', '"', '<', '>', '|':
			return '_'
		}
		return r
	}, name)
	name = truncateName(name, 200)
	name = strings.TrimFunc(name, func(r rune) bool { return r == '.' || unicode.IsSpace(r) })
	if name == "" {
		name = "attachment" + extensionFor(a.ContentType)
	}
	return name
}

// commonExtensions fixes the extension of common types (the system's
// MIME tables list several for some, in no useful order).
var commonExtensions = map[string]string{
	"text/plain": ".txt", "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
	"application/pdf": ".pdf", "application/zip": ".zip", "audio/mpeg": ".mp3", "video/mp4": ".mp4",
}

func extensionFor(ct string) string {
	mt := mediaType(ct)
	if e, ok := commonExtensions[mt]; ok {
		return e
	}
	if exts, _ := mime.ExtensionsByType(mt); len(exts) > 0 && len(exts[0]) <= 16 {
		return exts[0]
	}
	return ""
}

// MessageRef names a message: its id and, when two senders used the same
// id, the sender.
type MessageRef struct {
	Sender string
	ID     MessageID
}

// ParseMessageRef parses "ID" or "SENDER/ID".
func ParseMessageRef(s string) (MessageRef, error) {
	var r MessageRef
	idPart := s
	if sender, id, ok := strings.Cut(s, "/"); ok {
		n, err := protocol.NormalizeAccountName(sender)
		if err != nil {
			return r, fmt.Errorf("message %q: %w", truncate(s, 80), err)
		}
		r.Sender, idPart = n, id
	}
	id, err := ParseMessageID(idPart)
	if err != nil {
		return r, err
	}
	r.ID = id
	return r, nil
}

func (r MessageRef) String() string {
	if r.Sender == "" {
		return r.ID.String()
	}
	return r.Sender + "/" + r.ID.String()
}

// FindMessage finds a message by id among this account's own messages
// and those of its contacts and group members. Message ids are chosen by
// senders, so two senders may use the same one: without ref.Sender that
// is ErrAmbiguousMessage.
func (c *Client) FindMessage(ctx context.Context, ref MessageRef) (*Message, error) {
	if ref.Sender != "" {
		m, err := c.Message(ctx, ref.Sender, ref.ID)
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: %s", ErrNoMessage, ref)
		}
		return m, err
	}
	senders := map[string]bool{c.me(): true}
	cs, err := c.db.Contacts(ctx)
	if err != nil {
		return nil, err
	}
	for _, ct := range cs {
		senders[ct.Name] = true
	}
	gs, err := c.db.Groups(ctx)
	if err != nil {
		return nil, err
	}
	for _, g := range gs {
		for _, m := range g.Members {
			senders[m.Account] = true
		}
	}
	var found []*Message
	for s := range senders {
		m, err := c.Message(ctx, s, ref.ID)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		found = append(found, m)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: %s", ErrNoMessage, ref)
	case 1:
		return found[0], nil
	}
	names := make([]string, len(found))
	for i, m := range found {
		names[i] = m.Sender + "/" + ref.ID.String()
	}
	return nil, fmt.Errorf("%w: %s (name one of %s)", ErrAmbiguousMessage, ref, strings.Join(names, ", "))
}

func isNotFound(err error) bool { return err != nil && errors.Is(err, crypto.ErrNotFound) }

// SaveOptions configures SaveAttachment.
type SaveOptions struct {
	// Progress reports the download.
	Progress Progress
	// Overwrite replaces an existing file at the destination (default:
	// refuse with an error wrapping fs.ErrExist).
	Overwrite bool
}

// SaveAttachment downloads, verifies and decrypts the file of message
// ref to outPath, or into outPath under SafeFileName if outPath is a
// directory, and returns the path written. See DownloadAttachment.
func (c *Client) SaveAttachment(ctx context.Context, ref MessageRef, outPath string, o SaveOptions) (string, error) {
	m, err := c.FindMessage(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("save attachment: %w", err)
	}
	if m.Attachment == nil {
		return "", fmt.Errorf("save attachment: %w: %s", ErrNoAttachment, ref)
	}
	return c.DownloadAttachment(ctx, m.Attachment, outPath, o)
}

// DownloadAttachment fetches a's blob and decrypts it as it arrives into
// a temporary file beside the destination, which it renames to the
// destination once MAC, digest and padding verify. The ciphertext is
// also kept in a part file (".NAME.<digest>.part"); an interrupted
// download resumes from its length on the next call. On
// ErrAttachmentCorrupt the part file is deleted too; on other errors
// (network, disk) it is kept for resuming. No plaintext is ever left
// behind on failure.
func (c *Client) DownloadAttachment(ctx context.Context, a *Attachment, outPath string, o SaveOptions) (string, error) {
	name := SafeFileName(a)
	if err := checkPointer(a); err != nil {
		return "", fmt.Errorf("save %q: %w", name, err)
	}
	if outPath == "" {
		return "", fmt.Errorf("save %q: no destination path", name)
	}
	dest := outPath
	if st, err := os.Stat(outPath); err == nil && st.IsDir() {
		dest = filepath.Join(outPath, name)
	}
	if !o.Overwrite {
		if _, err := os.Lstat(dest); err == nil {
			return "", fmt.Errorf("save %q: %s: %w", name, dest, fs.ErrExist)
		}
	}
	dir, base := filepath.Split(dest)
	if dir == "" {
		dir = "."
	}
	base = truncateName(base, 100)
	part := filepath.Join(dir, fmt.Sprintf(".%s.%x.part", base, a.Digest[:6]))
	tmpPattern := "." + base + ".hush-*.tmp"
	removeStale(dir, tmpPattern)

	if err := c.fetchDecrypt(ctx, a, part, dir, tmpPattern, dest, o); err != nil {
		if errors.Is(err, ErrAttachmentCorrupt) || errors.Is(err, ErrAttachmentGone) {
			os.Remove(part)
		}
		return "", fmt.Errorf("save %q: %w", name, err)
	}
	os.Remove(part)
	syncDir(dir)
	return dest, nil
}

// checkPointer refuses a pointer that cannot describe a valid blob.
func checkPointer(a *Attachment) error {
	if !mediaapi.ValidObjectKey(a.ObjectKey) {
		return fmt.Errorf("%w: the message names no valid object", ErrAttachmentCorrupt)
	}
	if len(a.Key) != crypto.AttachmentKeySize || len(a.Digest) != crypto.AttachmentDigestSize {
		return fmt.Errorf("%w: the message's key or digest has the wrong size", ErrAttachmentCorrupt)
	}
	es := int64(a.EncryptedSize)
	if a.EncryptedSize > math.MaxInt64/2 || a.Size > math.MaxInt64/2 || es < crypto.EncryptedSize(int64(a.Size)) || (es-48)%16 != 0 {
		return fmt.Errorf("%w: the message's sizes (%d bytes, %d encrypted) do not fit together", ErrAttachmentCorrupt, a.Size, a.EncryptedSize)
	}
	return nil
}

// removeStale deletes temporary files a crash left behind (they may hold
// partial plaintext).
func removeStale(dir, pattern string) {
	ms, _ := filepath.Glob(filepath.Join(dir, globEscape(pattern)))
	for _, m := range ms {
		os.Remove(m)
	}
}

// globEscape escapes glob metacharacters except the pattern's one '*'.
func globEscape(p string) string {
	var b strings.Builder
	star := strings.LastIndex(p, "*")
	for i, r := range p {
		if i != star && strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// fetchDecrypt completes the download in one pass: the blob's bytes,
// first those an earlier call left in the part file, then the rest as it
// arrives (also appended to the part file, so an interrupted download
// resumes), go through crypto.AttachmentDecrypter, which hashes them and
// decrypts them into a temporary file. That file holds unverified
// plaintext: it is published at dest only once MAC, digest and padding
// verify, and removed on every failure.
func (c *Client) fetchDecrypt(ctx context.Context, a *Attachment, part, dir, tmpPattern, dest string, o SaveOptions) (err error) {
	want := int64(a.EncryptedSize)
	tmp, err := os.CreateTemp(dir, tmpPattern)
	if err != nil {
		return err
	}
	published := false
	defer func() {
		if !published {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	dec, err := crypto.NewAttachmentDecrypter(&plainWriter{w: tmp, left: int64(a.Size)}, want, a.Key, a.Digest)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrAttachmentCorrupt, err)
	}
	defer dec.Close() // stops its goroutines on every early return

	pf, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("part file: %w", err)
	}
	defer pf.Close()
	have, err := pf.Seek(0, io.SeekEnd)
	if err == nil && have > want {
		// Not this blob's prefix: start over.
		if err = pf.Truncate(0); err == nil {
			have, err = pf.Seek(0, io.SeekStart)
		}
	}
	if err != nil {
		return fmt.Errorf("part file: %w", err)
	}
	if have > 0 {
		buf := make([]byte, 256<<10)
		if _, err := io.CopyBuffer(dec, io.NewSectionReader(pf, 0, have), buf); err != nil {
			return fmt.Errorf("part file: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if have < want {
		w := &cappedWriter{w: &teeWriter{part: pf, dec: dec}, left: want - have}
		if err := c.download(ctx, a.ObjectKey, w, have, o.Progress); err != nil {
			// Keep what arrived for the next call to resume from.
			pf.Sync()
			return err
		}
	}
	if got := dec.Written(); got != want {
		return fmt.Errorf("%w: the stored file has %d bytes, the message says %d", ErrAttachmentCorrupt, got, want)
	}
	n, err := dec.Finish()
	switch {
	case errors.Is(err, crypto.ErrBadMAC), errors.Is(err, crypto.ErrBadDigest), errors.Is(err, crypto.ErrBadPadding),
		errors.Is(err, crypto.ErrTruncated), errors.Is(err, crypto.ErrAttachmentKey):
		return fmt.Errorf("%w: %w", ErrAttachmentCorrupt, err)
	case err != nil:
		return err
	case n < int64(a.Size):
		return fmt.Errorf("%w: it decrypts to %d bytes, the message says %d", ErrAttachmentCorrupt, n, a.Size)
	}
	// Verified: publish.
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if o.Overwrite {
		err = os.Rename(tmp.Name(), dest)
	} else if err = os.Link(tmp.Name(), dest); err == nil || errors.Is(err, fs.ErrExist) {
		// A hard link never replaces an existing file.
		if err == nil {
			os.Remove(tmp.Name())
		}
	} else if _, serr := os.Lstat(dest); serr == nil {
		err = fs.ErrExist
	} else {
		err = os.Rename(tmp.Name(), dest) // no hard links here
	}
	if err != nil {
		return fmt.Errorf("save to %s: %w", dest, err)
	}
	published = true
	return nil
}

// teeWriter appends downloaded blob bytes to the part file (ciphertext,
// for resuming) and hands them to the decrypter.
type teeWriter struct {
	part *os.File
	dec  *crypto.AttachmentDecrypter
}

func (t *teeWriter) Write(p []byte) (int, error) {
	n, err := t.part.Write(p)
	if err != nil {
		return n, fmt.Errorf("part file: %w", err)
	}
	return t.dec.Write(p)
}

// download fetches key from offset into w, logging in again once if the
// relay says the token expired, and words the server's refusals.
func (c *Client) download(ctx context.Context, key string, w *cappedWriter, offset int64, progress Progress) error {
	mc, ts, done, err := c.mediaClient()
	if err != nil {
		return err
	}
	defer done()
	n, err := mc.Download(ctx, key, w, offset, mediaclient.Progress(progress))
	if ts.retryAuth(err) {
		_, err = mc.Download(ctx, key, w, offset+n, mediaclient.Progress(progress))
	}
	var me *mediaclient.Error
	switch {
	case err == nil:
		return nil
	case w.over:
		return fmt.Errorf("%w: the stored file is longer than the message says", ErrAttachmentCorrupt)
	case errors.As(err, &me) && me.Code == mediaapi.CodeNotFound:
		return fmt.Errorf("%w (files are kept for a limited time): %w", ErrAttachmentGone, err)
	case strings.Contains(err.Error(), "past the object's end"):
		return fmt.Errorf("%w: the stored file is shorter than the message says: %w", ErrAttachmentCorrupt, err)
	}
	return err
}

// cappedWriter refuses bytes beyond left, so a server cannot make the
// client download more than the pointer's encrypted size.
type cappedWriter struct {
	w    io.Writer
	left int64
	over bool
}

var errBlobTooLong = errors.New("the stored file is longer than the message says")

func (c *cappedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		c.over = true
		return 0, errBlobTooLong
	}
	n, err := c.w.Write(p)
	c.left -= int64(n)
	return n, err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// plainWriter writes the first left bytes and drops the padding after.
type plainWriter struct {
	w    io.Writer
	left int64
}

func (p *plainWriter) Write(b []byte) (int, error) {
	keep := b
	if int64(len(keep)) > p.left {
		keep = keep[:p.left]
	}
	if len(keep) > 0 {
		n, err := p.w.Write(keep)
		p.left -= int64(n)
		if err != nil {
			return n, err
		}
	}
	return len(b), nil
}

// mediaToken gives mediaclient the account's token and logs in again
// after the relay refused it as expired.
type mediaToken struct {
	c     *Client
	force atomic.Bool
}

func (t *mediaToken) token(ctx context.Context) (string, error) {
	return t.c.token(ctx, t.force.Swap(false))
}

// retryAuth reports whether err is an expired or unknown token, and if
// so arranges for a fresh one on the next request.
func (t *mediaToken) retryAuth(err error) bool {
	var me *mediaclient.Error
	if errors.As(err, &me) && me.Status == http.StatusUnauthorized &&
		(me.Code == mediaapi.CodeTokenExpired || me.Code == mediaapi.CodeInvalidToken) {
		t.force.Store(true)
		return true
	}
	return false
}

// mediaClient returns a media client for the account's relay (the media
// API lives beside the relay's WebSocket endpoint) and a function that
// releases its idle connections. Transfers have no overall timeout; the
// caller's context bounds them.
func (c *Client) mediaClient() (*mediaclient.Client, *mediaToken, func(), error) {
	a, _, err := c.account()
	if err != nil {
		return nil, nil, nil, err
	}
	relay := a.RelayURL
	if c.cfg.RelayURL != "" {
		relay = c.cfg.RelayURL
	}
	base, err := mediaBaseURL(relay)
	if err != nil {
		return nil, nil, nil, err
	}
	var hc *http.Client
	done := func() {}
	if c.cfg.HTTPClient != nil && c.cfg.HTTPClient.Transport != nil {
		hc = &http.Client{Transport: c.cfg.HTTPClient.Transport}
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		hc = &http.Client{Transport: tr}
		done = tr.CloseIdleConnections
	}
	ts := &mediaToken{c: c}
	mc, err := mediaclient.New(base, ts.token, mediaclient.Options{HTTPClient: hc})
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return mc, ts, done, nil
}

// mediaBaseURL maps the relay's WebSocket URL to its HTTP base.
func mediaBaseURL(relay string) (string, error) {
	u, err := url.Parse(relay)
	if err != nil {
		return "", fmt.Errorf("relay URL: %w", err)
	}
	switch u.Scheme {
	case "ws", "http":
		u.Scheme = "http"
	case "wss", "https":
		u.Scheme = "https"
	default:
		return "", fmt.Errorf("relay URL %q: want ws:// or wss://", truncate(relay, 80))
	}
	u.Path = strings.TrimSuffix(u.Path, protocol.WSPath)
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	return u.String(), nil
}
