package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/protocol"
)

var cmdReceive = &command{
	name:    "receive",
	args:    "[--json] [--timeout DURATION]",
	summary: "print everything pending and what arrives until --timeout passes with nothing new, then exit",
	detail: `Connects, prints every event waiting for this device (messages, receipts,
group changes, identity changes…) and then anything that arrives, until
--timeout passes without a new message, receipt, group change, identity
change or undecryptable message. Then it sends the delivery receipts it owes
and exits 0.

With --json each event is one JSON object on its own line (see docs/cli.md
for the fields); without it, one line of text per event.

An event is removed from the profile only after its line was written to
stdout: if hush is killed, or stdout is closed, the events not yet printed
are printed by the next receive or listen, never lost. (An event may be
printed twice if hush is killed right after printing it: use the id to
deduplicate.)

If the server cannot be reached within --connect-timeout the exit code is 4
(events already stored in the profile are printed first).`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print one JSON object per line")
		idle := fs.Duration("timeout", 5*time.Second, "exit once this long passes with nothing new")
		connect := fs.Duration("connect-timeout", 30*time.Second, "give up when the server cannot be reached for this long")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 0, 0, ""); err != nil {
			return err
		}
		if err := positiveDuration(fs.cmd.name, "timeout", *idle); err != nil {
			return err
		}
		if err := positiveDuration(fs.cmd.name, "connect-timeout", *connect); err != nil {
			return err
		}
		return a.stream(ctx, streamOptions{json: *asJSON, idle: *idle, connect: *connect})
	},
}

var cmdListen = &command{
	name:    "listen",
	args:    "[--json] [--stdin]",
	summary: "print events as they arrive, until SIGINT or SIGTERM",
	detail: `Like receive, but never stops on its own: it stays connected (reconnecting
with backoff when the connection drops) and prints each event as it arrives,
including connection state changes ("connection" events) and relay
acknowledgements of messages sent from this profile ("sent" events). SIGINT
or SIGTERM end it cleanly with exit code 0.

The profile is locked while listen runs, so other hush commands cannot use
it. With --stdin, listen also reads requests from stdin, one JSON object per
line, and answers each with a "response" line on stdout:

  {"id":"1","method":"send","to":"bob","text":"hi"}
  {"id":"2","method":"send","group":"team","text":"hi all","quote":"<message id>"}
  {"id":"3","method":"read","to":"bob"}          (or "group")
  {"id":"4","method":"typing","to":"bob","started":true}

  {"type":"response","request":"1","ok":true,"message_id":"…"}
  {"type":"response","request":"2","ok":false,"error":"…","exit_code":3}

A send is answered once it is queued; a "sent" event follows when the relay
acknowledged it. The end of stdin ends listen (exit 0).`,
	run: func(ctx context.Context, a *app, args []string) error {
		fs := a.flags()
		asJSON := fs.Bool("json", false, "print one JSON object per line")
		stdin := fs.Bool("stdin", false, "read requests (send, read, typing) as JSON lines from stdin")
		pos, err := fs.parse(args, false)
		if err != nil {
			return err
		}
		if err := fs.want(pos, 0, 0, ""); err != nil {
			return err
		}
		if *stdin && !*asJSON {
			return usagef(fs.cmd.name, "--stdin needs --json (requests are answered with JSON lines)")
		}
		o := streamOptions{json: *asJSON, forever: true}
		if *stdin {
			o.requests = a.env.Stdin
		}
		return a.stream(ctx, o)
	},
}

type streamOptions struct {
	json bool
	// forever: listen (no idle timeout, connection events printed).
	forever bool
	// idle: receive's --timeout; connect: its --connect-timeout.
	idle, connect time.Duration
	// requests: listen --stdin.
	requests io.Reader
}

// printer writes event lines. Writes are serialised by the tracked
// stdout; gn is only used under mu.
type printer struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
	gn   *groupNames
}

// event prints ev (or skips it) and reports an error only when the line
// could not be written.
func (p *printer) event(ctx context.Context, ev client.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		v := eventJSON(ctx, p.gn, ev)
		if v == nil {
			return nil
		}
		return writeJSON(p.w, v)
	}
	s := eventText(ctx, p.gn, ev)
	if s == "" {
		return nil
	}
	return writeLine(p.w, s)
}

// durable reports whether ev is stored until handled (and so counts as
// "something new" for receive's --timeout).
func durable(ev client.Event) bool {
	switch ev.(type) {
	case *client.MessageEvent, *client.ReceiptEvent, *client.IdentityChangedEvent, *client.UndecryptableEvent, *client.GroupUpdateEvent:
		return true
	}
	return false
}

// stream is receive and listen.
func (a *app) stream(ctx context.Context, o streamOptions) error {
	c, err := a.open(ctx, openOptions{online: true})
	if err != nil {
		return err
	}
	defer closeClient(c)
	p := &printer{w: a.stdout, json: o.json, gn: newGroupNames(c)}

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var (
		failMu sync.Mutex
		failed error
	)
	fail := func(err error) {
		failMu.Lock()
		if failed == nil {
			failed = err
		}
		failMu.Unlock()
		stopRun()
	}
	activity := make(chan struct{}, 1)
	runDone := make(chan error, 1)
	go func() {
		runDone <- c.Run(runCtx, func(hctx context.Context, ev client.Event) error {
			if cs, ok := ev.(*client.ConnectionStateEvent); ok {
				if cs.State == client.Offline && cs.Err != "" {
					// The client stopped for good (this device was
					// removed): nothing will arrive any more.
					fail(fmt.Errorf("the connection stopped for good: %s", cs.Err))
				}
				if !o.forever {
					return nil
				}
			}
			if err := p.event(hctx, ev); err != nil {
				// Not acknowledged: printed again next time.
				fail(err)
				return err
			}
			if durable(ev) {
				select {
				case activity <- struct{}{}:
				default:
				}
			}
			return nil
		})
	}()
	if o.requests != nil {
		go func() {
			err := serveRequests(runCtx, c, a.stdout, o.requests)
			if err != nil && runCtx.Err() == nil {
				fail(err)
				return
			}
			stopRun() // end of stdin: the controlling program is done
		}()
	}

	var streamErr error
	if o.forever {
		select {
		case <-runCtx.Done():
		case err := <-runDone:
			runDone <- err
		}
	} else {
		streamErr = waitIdle(ctx, runCtx, c, o, activity, runDone)
	}
	stopRun()
	runErr := <-runDone
	failMu.Lock()
	fErr := failed
	failMu.Unlock()
	if fErr != nil && a.stdout.broken() {
		return nil // stdout's reader left: quietly done
	}
	// Owed delivery receipts go out now rather than on the next run, so
	// senders see ✓✓ (bounded; they are kept if this fails).
	grace := 10 * time.Second
	dctx := ctx
	if ctx.Err() != nil {
		dctx, grace = context.WithoutCancel(ctx), 2*time.Second
	}
	if streamErr == nil && fErr == nil {
		if n, err := drainOutbox(dctx, c, grace); err == nil && n > 0 {
			fmt.Fprintf(a.stderr, "hush: %d outgoing item%s (receipts or messages) still queued; they go out the next time hush connects\n", n, plural(n))
		}
	}
	switch {
	case fErr != nil:
		return fErr
	case streamErr != nil:
		return streamErr
	case runErr != nil && !errors.Is(runErr, context.Canceled):
		return runErr
	}
	return nil // a signal ends receive and listen cleanly
}

// waitIdle is receive's clock: wait until connected and drained (bounded
// by the connect timeout), then until the idle timeout passes without a
// durable event.
func waitIdle(ctx, runCtx context.Context, c *client.Client, o streamOptions, activity <-chan struct{}, runDone chan error) error {
	sctx, cancel := context.WithTimeout(runCtx, o.connect)
	err := c.WaitSynced(sctx)
	cancel()
	if err != nil {
		if runCtx.Err() != nil {
			return nil // a signal, or a write failure reported by the handler
		}
		st, why := c.State()
		if st == client.Offline && why != "" {
			return fmt.Errorf("the connection stopped for good: %s", why)
		}
		return &exitError{code: ExitNetwork, err: fmt.Errorf("%w within %s (%s)", errUnreachable, o.connect, connectionWords(c))}
	}
	t := time.NewTimer(o.idle)
	defer t.Stop()
	for {
		select {
		case <-activity:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
			t.Reset(o.idle)
		case <-t.C:
			return nil
		case <-runCtx.Done():
			return nil
		case err := <-runDone:
			runDone <- err
			return nil
		}
	}
}

// request is one line of listen --stdin.
type request struct {
	ID      string `json:"id"`
	Method  string `json:"method"`
	To      string `json:"to"`
	Group   string `json:"group"`
	Text    string `json:"text"`
	Quote   string `json:"quote"`
	Started bool   `json:"started"`
}

type response struct {
	Type      string `json:"type"` // "response"
	Request   string `json:"request"`
	OK        bool   `json:"ok"`
	MessageID string `json:"message_id,omitempty"`
	Error     string `json:"error,omitempty"`
	ExitCode  int    `json:"exit_code,omitempty"`
}

// maxRequestLine bounds one request line (a 64 KiB text, escaped).
const maxRequestLine = 1 << 20

// serveRequests answers listen --stdin requests until in ends (nil) or
// stdout fails.
func serveRequests(ctx context.Context, c *client.Client, out io.Writer, in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxRequestLine)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		resp := answer(ctx, c, []byte(line))
		if err := writeJSON(out, resp); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			// Nothing after an unreadable line can be trusted to be
			// aligned; answer and stop.
			writeJSON(out, response{Type: "response", Error: fmt.Sprintf("request line longer than %d bytes", maxRequestLine), ExitCode: ExitUsage})
		}
		return fmt.Errorf("read requests from stdin: %w", err)
	}
	return nil
}

func answer(ctx context.Context, c *client.Client, line []byte) response {
	r, err := parseRequest(line)
	resp := response{Type: "response", Request: r.ID}
	if err == nil {
		var id client.MessageID
		id, err = perform(ctx, c, &r)
		if err == nil {
			resp.OK = true
			if !id.IsZero() {
				resp.MessageID = id.String()
			}
			return resp
		}
	}
	resp.Error, resp.ExitCode = describe(err), exitCode(err)
	return resp
}

// parseRequest decodes and checks one request line: a single JSON object
// with known fields, a known method, exactly one of "to" and "group", a
// valid account name, and for send a text within the limit and a
// well-formed quote id. On error the request's id is still returned when
// it could be read, so the answer can name it.
func parseRequest(line []byte) (request, error) {
	var r request
	if len(line) > maxRequestLine {
		return r, usagef("request", "longer than %d bytes", maxRequestLine)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		var loose struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(line, &loose) == nil {
			r = request{ID: loose.ID}
		} else {
			r = request{}
		}
		return r, usagef("request", "not a request object: %v", err)
	}
	if dec.More() {
		return r, usagef("request", "one JSON object per line")
	}
	switch r.Method {
	case "send", "read", "typing":
	case "":
		return r, usagef("request", `missing "method" (send, read or typing)`)
	default:
		return r, usagef("request", "unknown method %q (want send, read or typing)", clip(r.Method))
	}
	if (r.To == "") == (r.Group == "") {
		return r, usagef(r.Method, `give exactly one of "to" and "group"`)
	}
	if r.To != "" {
		to, err := accountName(r.Method, r.To)
		if err != nil {
			return r, err
		}
		r.To = to
	}
	if r.Method == "send" {
		if strings.TrimSpace(r.Text) == "" {
			return r, usagef("send", `"text" is empty`)
		}
		if len(r.Text) > protocol.MaxTextLen {
			return r, usagef("send", "the text is %d bytes; the limit is %d", len(r.Text), protocol.MaxTextLen)
		}
		if r.Quote != "" {
			if _, err := client.ParseMessageID(r.Quote); err != nil {
				return r, usagef("send", "quote: %v", err)
			}
		}
	} else if r.Text != "" || r.Quote != "" {
		return r, usagef(r.Method, `"text" and "quote" belong to send`)
	}
	return r, nil
}

// perform carries out a checked request.
func perform(ctx context.Context, c *client.Client, r *request) (client.MessageID, error) {
	var none client.MessageID
	conv := client.Direct(r.To)
	var gid client.GroupID
	if r.Group != "" {
		id, err := c.FindGroup(ctx, r.Group)
		if err != nil {
			return none, err
		}
		gid, conv = id, client.GroupConv(id)
	}
	switch r.Method {
	case "send":
		var opts []client.SendOption
		if r.Quote != "" {
			qid, _ := client.ParseMessageID(r.Quote) // checked by parseRequest
			q, err := findQuote(ctx, c, conv, qid)
			if err != nil {
				return none, err
			}
			opts = append(opts, client.WithQuote(q))
		}
		if r.Group == "" {
			return c.Send(ctx, r.To, r.Text, opts...)
		}
		return c.SendGroup(ctx, gid, r.Text, opts...)
	case "read":
		return none, c.MarkRead(ctx, conv)
	default: // "typing"
		return none, c.SendTyping(ctx, conv, r.Started)
	}
}
