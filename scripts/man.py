#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the section 3 manual of libctx from the comments of its public headers.

    scripts/man.py --out DIR --version X.Y.Z HEADER:INCLUDE:LIBRARY...

HEADER is a path to a public header, INCLUDE the name a program includes it
by (ctx.h, ctx/io.h, ctx/pq.h) and LIBRARY the library that defines its
functions (ctx, ctx-pq, ...).  The pages go to DIR/man3: one page per
documented group of declarations, named after its first function (or first
name), a one-line .so page for every other name of the group, and an
overview page per header (libctx(3) for <ctx.h>, libctx-io(3) for
<ctx/io.h>, and so on) made from the comment at the top of the header.

The headers follow one convention, and this script reads nothing else:

  * A comment directly above a run of declarations (no blank line between)
    documents all of them; a blank line ends the run.  Declarations are
    exported functions and variables (CTX_EXPORT, CTX_<LIB>_EXPORT),
    typedefs and #define'd constants.
  * A banner comment, whose first line is a row of dashes or equals signs,
    opens a section: its next line is the section's title and the rest is
    text that holds for every declaration of the section.  A banner directly
    above declarations is their documentation.
  * Names that end in an underscore are internal, unless the library exports
    them (they then get a page that says so).  Macros that share a function's
    name (the call-site and inline wrappers) are documented by the
    function's page.
  * In a comment, a paragraph whose lines are not all indented alike (a code
    example, a table, an indented list) is shown as written; other
    paragraphs are filled.

Only the Python standard library is used, so the build needs nothing beyond
python3.
"""

import argparse
import os
import re
import sys

EXPORT_RE = re.compile(r"\bCTX_[A-Z0-9_]*EXPORT\b\s*")
BANNER_RE = re.compile(r"^\s*[-=]{10,}\s*$")


class Comment:
    def __init__(self, lines):
        self.lines = lines  # text lines with the comment markers removed
        self.banner = bool(lines) and BANNER_RE.match(lines[0]) is not None

    def _split(self):
        """A banner's title line, cut after its first sentence when the
        text goes on in the same line ("Call-site macros.  Define ...")."""
        lines = self.lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
        if not lines:
            return "", []
        first = lines[0].strip()
        m = re.match(r"(.+?)\.\s+(\S.*)$", first)
        if m:
            return m.group(1), [m.group(2)] + lines[1:]
        return first, lines[1:]

    def title(self):
        return self._split()[0]

    def text(self):
        """The documentation text: for a banner, what follows its title."""
        if not self.banner:
            return self.lines
        return self._split()[1]


class Decl:
    def __init__(self, kind, names, text, trailing):
        self.kind = kind  # "function", "variable", "typedef", "macro", "inline"
        self.names = names
        self.text = text  # the declaration as a program would write it
        self.trailing = trailing  # a comment on the same line, if any


class Group:
    def __init__(self, comment, section, decls):
        self.comment = comment
        self.section = section
        self.decls = decls


def strip_comment_markers(raw):
    """Turns the text of /* ... */ into lines without the markers."""
    raw = raw.strip()
    assert raw.startswith("/*") and raw.endswith("*/")
    body = raw[2:-2]
    out = []
    for line in body.split("\n"):
        s = line.rstrip()
        m = re.match(r"^\s*\*( ?)(.*)$", s)
        if m:
            s = m.group(2)
        else:
            s = s.strip() if not out else s
        out.append(s)
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def split_trailing_comment(line):
    m = re.search(r"/\*(.*?)\*/\s*$", line)
    if m and not line.lstrip().startswith("/*"):
        return line[: m.start()].rstrip(), m.group(1).strip()
    m = re.search(r"//(.*)$", line)
    if m and not line.lstrip().startswith("//"):
        return line[: m.start()].rstrip(), m.group(1).strip()
    return line, None


def parse_statement(text, trailing):
    """A Decl for one C statement at file scope, or None when it is not public."""
    flat = " ".join(text.split())
    exported = EXPORT_RE.search(flat) is not None
    flat = EXPORT_RE.sub("", flat)
    if flat.startswith("typedef"):
        m = re.search(r"\(\s*\*\s*(\w+)\s*\)\s*\(", flat)
        if "}" in flat:
            # A typedef with a body: the name follows the closing brace.
            m = re.search(r"\}\s*(\w+)", flat)
            if not m:
                return None
            name = m.group(1)
        elif m:
            name = m.group(1)
        else:
            m = re.search(r"(\w+)\s*(\[[^\]]*\]\s*)*;$", flat)
            if not m:
                return None
            name = m.group(1)
        return Decl("typedef", [name], text_for_synopsis(text), trailing)
    if flat.startswith("static inline") or flat.startswith("static __inline"):
        m = re.search(r"(\w+)\s*\(", flat)
        if not m or m.group(1).endswith("_"):
            return None
        proto = flat[: flat.index("{")].strip() if "{" in flat else flat.rstrip(";")
        return Decl("inline", [m.group(1)], proto + ";", trailing)
    if not exported:
        return None
    if "(" in flat and not flat.startswith("extern"):
        m = re.search(r"(\w+)\s*\(", flat)
        return Decl("function", [m.group(1)], text_for_synopsis(text), trailing)
    m = re.search(r"(\w+)\s*(\[[^\]]*\]\s*)*;$", flat)
    if not m:
        return None
    return Decl("variable", [m.group(1)], text_for_synopsis(text), trailing)


def text_for_synopsis(text):
    """The declaration without the export macro, one line if it fits."""
    text = EXPORT_RE.sub("", text)
    lines = [l.rstrip() for l in text.strip().split("\n")]
    if "{" not in text:
        flat = " ".join(" ".join(lines).split())
        if len(flat) <= 78:
            return flat
        # Break after commas, continuation lines under the first parameter.
        open_at = flat.find("(")
        if flat.startswith("typedef"):
            open_at = flat.find("(", flat.find(")"))
        indent = " " * (open_at + 1)
        out, cur = [], ""
        for part in re.split(r"(?<=,) ", flat):
            if cur and len(cur) + 1 + len(part) > 78:
                out.append(cur)
                cur = indent + part
            else:
                cur = part if not cur else cur + " " + part
        out.append(cur)
        return "\n".join(out)
    # A typedef with a body: keep its layout, dedented.
    first = lines[0]
    return "\n".join([first.strip()] + lines[1:])


def parse_header(path):
    """Returns (top Comment, [Group], [banner Comment]) of a header."""
    src = open(path, encoding="utf-8").read()
    lines = src.split("\n")
    i, n = 0, len(lines)
    top = None
    groups = []
    banners = []
    section = None  # the current banner Comment
    pending = None  # the comment directly above the current run
    run = []  # declarations of the current run
    run_comment = None
    seen_code = False

    def close_run():
        nonlocal run, run_comment
        if run:
            groups.append(Group(run_comment, section, run))
        run, run_comment = [], None

    while i < n:
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            close_run()
            pending = None
            i += 1
            continue
        if stripped.startswith("/*"):
            start = i
            while "*/" not in lines[i]:
                i += 1
            raw = "\n".join(lines[start : i + 1])
            i += 1
            c = Comment(strip_comment_markers(raw))
            if all("SPDX-License-Identifier:" in l for l in c.lines if l.strip()):
                continue  # the licence line, not documentation
            if top is None and not seen_code:
                top = c
                continue
            close_run()
            if c.banner:
                section = c
                banners.append(c)
            pending = c
            continue
        if stripped.startswith("//"):
            i += 1
            continue
        seen_code = True
        if stripped.startswith("#"):
            # A directive: a #define is a declaration, the others (#if,
            # #include, ...) neither end nor start a run.
            text = line
            while text.endswith("\\") and i + 1 < n:
                i += 1
                text = text[:-1] + "\n" + lines[i]
            i += 1
            m = re.match(r"\s*#\s*define\s+(\w+)(\([^)]*\))?\s*(.*)$", text, re.S)
            if not m:
                continue
            name = m.group(1)
            body, trailing = split_trailing_comment(text)
            if not run:
                run_comment = pending
            pending = None
            run.append(Decl("macro", [name], " ".join(body.split()), trailing))
            continue
        if stripped.startswith('extern "C"') or stripped == "}":
            i += 1
            continue
        # A C statement: up to ';' at brace depth 0, or the '}' that closes a
        # function body.
        start = i
        depth = 0
        text = ""
        trailing = None
        while i < n:
            body, tc = split_trailing_comment(lines[i])
            trailing = trailing or tc
            text += ("\n" if text else "") + body
            done = False
            for ch in body:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0 and not text.lstrip().startswith("typedef"):
                        done = True
                elif ch == ";" and depth == 0:
                    done = True
            i += 1
            if done:
                break
        d = parse_statement(text, trailing)
        if not run:
            run_comment = pending
        pending = None
        run.append(d if d is not None else Decl("skip", [], "", None))
    close_run()
    return top, groups, banners


def config_macros(path):
    """The CTX_ macros a program may define before including the header:
    tested by #if lines, never defined by the header, named in a comment
    (so documented there)."""
    src = open(path, encoding="utf-8").read()
    tested = set()
    for line in src.split("\n"):
        if re.match(r"\s*#\s*if", line):
            tested.update(re.findall(r"\b(CTX_[A-Z0-9_]+)\b", line))
    defined = set(re.findall(r"^\s*#\s*define\s+(\w+)", src, re.M))
    comments = " ".join(re.findall(r"/\*.*?\*/", src, re.S))
    return sorted(m for m in tested - defined if not m.endswith("_H") and re.search(r"\b%s\b" % m, comments))


# ---------------------------------------------------------------------------
# roff output


def esc(s):
    s = s.replace("\\", "\\e")
    s = s.replace("-", "\\-")
    if s.startswith(".") or s.startswith("'"):
        s = "\\&" + s
    return s


def esc_text(s):
    """Escapes filled text; hyphens in words stay hyphens."""
    s = s.replace("\\", "\\e")
    s = re.sub(r"(?<![\w])-", "\\-", s)
    if s.startswith(".") or s.startswith("'"):
        s = "\\&" + s
    return s


def paragraphs(lines):
    para = []
    for l in lines:
        if l.strip():
            para.append(l)
        elif para:
            yield para
            para = []
    if para:
        yield para


def render_text(lines):
    out = []
    nonblank = [l for l in lines if l.strip()]
    margin = min((len(l) - len(l.lstrip()) for l in nonblank), default=0)
    for para in paragraphs(lines):
        indents = {len(l) - len(l.lstrip()) for l in para}
        base = min(indents)
        if len(indents) == 1 and base - margin < 4:
            # Prose, filled; a slightly indented paragraph stays indented.
            out.append(".PP")
            if base > margin:
                out.append(".RS 2")
            out.extend(esc_text(l.strip()) for l in para)
            if base > margin:
                out.append(".RE")
        else:
            out.append(".PP")
            out.append(".RS 4")
            out.append(".nf")
            out.extend(esc(l[base:]) for l in para)
            out.append(".fi")
            out.append(".RE")
    return out


def first_sentence(lines):
    text = " ".join(l.strip() for l in lines if l.strip())
    m = re.match(r"(.+?[^.]\.)(\s|$)", text)
    s = m.group(1) if m else text
    s = s.rstrip(".")
    if len(s) > 90:
        s = s[:90].rsplit(" ", 1)[0] + " ..."
    return s


def overview_name(include):
    stem = os.path.splitext(os.path.basename(include))[0]
    return "libctx" if include == "ctx.h" else "libctx-" + stem


class Page:
    def __init__(self, name, names, summary, include, library, synopsis, body, see):
        self.name = name
        self.names = names
        self.summary = summary
        self.include = include
        self.library = library
        self.synopsis = synopsis
        self.body = body
        self.see = see


def write_page(outdir, page, version):
    lines = [
        '.TH "%s" 3 "" "libctx %s" "libctx Manual"' % (page.name.upper(), version),
        ".SH NAME",
        "%s \\- %s" % (", ".join(esc(n) for n in page.names), esc_text(page.summary)),
        ".SH LIBRARY",
        "lib%s (\\fB\\-l%s\\fR; pkg\\-config \\fBlib%s\\fR)" % (esc(page.library), esc(page.library), esc(page.library)),
        ".SH SYNOPSIS",
        ".nf",
        ".B #include <%s>" % page.include,
    ]
    if page.synopsis:
        lines.append("")
        for s in page.synopsis:
            lines.extend(esc(l) for l in s.split("\n"))
    lines.append(".fi")
    lines.append(".SH DESCRIPTION")
    lines.extend(page.body)
    if page.see:
        lines.append(".SH SEE ALSO")
        refs = sorted(set(page.see) - set(page.names), key=lambda s: (not s.startswith("libctx"), s))
        lines.append(",\n".join(".BR %s (3)" % esc(r) for r in refs))
    with open(os.path.join(outdir, page.name + ".3"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--version", default="")
    ap.add_argument("--list", help="also write the names of every page to this file")
    ap.add_argument("headers", nargs="+", help="HEADER:INCLUDE:LIBRARY")
    args = ap.parse_args()

    outdir = os.path.join(args.out, "man3")
    os.makedirs(outdir, exist_ok=True)
    for old in os.listdir(outdir):
        if old.endswith(".3"):
            os.remove(os.path.join(outdir, old))

    written = {}  # name -> page file it resolves to
    for spec in args.headers:
        path, include, library = spec.split(":")
        top, groups, banners = parse_header(path)
        over = overview_name(include)
        functions = {nm for g in groups for d in g.decls if d.kind in ("function", "inline") for nm in d.names}

        pages = []
        page_sections = []
        carried = set()  # the banners whose text some page carries
        listing = []  # (section title, [names]) for the overview page
        for g in groups:
            decls = [d for d in g.decls if d.kind != "skip" and d.names]
            keep = []
            for d in decls:
                name = d.names[0]
                if d.kind == "macro":
                    if name in functions or name.endswith("_") or name.endswith("_H") or "EXPORT" in name:
                        continue
                elif d.kind in ("typedef", "inline") and name.endswith("_"):
                    continue
                if name in written or any(name in k.names for k in keep):
                    continue
                keep.append(d)
            if not keep:
                continue
            names = [d.names[0] for d in keep]
            primary = next((d.names[0] for d in keep if d.kind == "function"), names[0])
            names = [primary] + [x for x in names if x != primary]

            own = g.comment
            section = g.section
            body = []
            if own is not None and own.text():
                body.extend(render_text(own.text()))
                summary = own.title() if own.banner else first_sentence(own.text())
            elif own is not None and own.banner:
                summary = own.title()
            else:
                summary = section.title() if section is not None else "declared in <%s>" % include
                notes = ["%s: %s" % (d.names[0], d.trailing) for d in keep if d.trailing]
                if notes:
                    body.append(".PP")
                    body.append(".nf")
                    body.extend(esc(x) for x in notes)
                    body.append(".fi")
            if any(nm.endswith("_") for nm in names):
                body.append(".PP")
                body.append("Internal: exported for the header's own macros; not for direct use.")
            if section is not None and section is not own and section.text():
                body.append(".SS %s" % esc_text(section.title()))
                body.extend(render_text(section.text()))
            body.append(".PP")
            body.append("What every declaration of")
            body.append(".B <%s>" % include)
            body.append("has in common is in")
            body.append(".BR %s (3)." % over)
            if not body or body[0] != ".PP":
                body.insert(0, ".PP")

            synopsis = []
            for d in keep:
                t = d.text
                if d.kind == "macro":
                    synopsis.append(t)
                else:
                    synopsis.append(t)
            see = [over]
            pages.append(Page(primary, names, summary, include, library, synopsis, body, see))
            carried.add(id(section))
            if own is not None:
                carried.add(id(own))
            title = section.title() if section is not None else ""
            page_sections.append(title)
            if listing and listing[-1][0] == title:
                listing[-1][1].extend(names)
            else:
                listing.append((title, list(names)))
            for nm in names:
                written[nm] = primary

        # Each page points at the other pages of its section.
        for p, title in zip(pages, page_sections):
            p.see.extend(q.name for q, t in zip(pages, page_sections) if t == title and t)
        for p in pages:
            write_page(outdir, p, args.version)
            for other in p.names:
                if other != p.name:
                    with open(os.path.join(outdir, other + ".3"), "w", encoding="utf-8") as f:
                        f.write(".so man3/%s.3\n" % p.name)

        # The overview page of the header.
        body = render_text(top.lines if top else [])
        # The sections of the header whose text no page carries (those that
        # only hold macros documented elsewhere, such as the fast path).
        notes = [b for b in banners if b.text() and id(b) not in carried]
        if notes:
            body.append(".SH NOTES")
            for b in notes:
                body.append(".SS %s" % esc_text(b.title()))
                body.extend(render_text(b.text()))
        body.append(".SH CONTENTS")
        for title, names in listing:
            if title:
                body.append(".SS %s" % esc_text(title))
            body.append(".PP")
            body.append(",\n".join(".BR %s (3)" % esc(nm) for nm in names))
        summary = first_sentence(top.lines) if top else include
        summary = re.sub(r"^(libctx[-\w]*|<[^>]+>):\s*", "", summary)
        all_names = [nm for _, ns in listing for nm in ns]
        see = [overview_name(s.split(":")[1]) for s in args.headers]
        write_page(outdir, Page(over, [over], summary, include, library, [], body, see), args.version)
        written[over] = over
        # `man CTX_NO_INLINE` and the like open the overview, which explains them.
        for m in config_macros(path):
            if m not in written:
                with open(os.path.join(outdir, m + ".3"), "w", encoding="utf-8") as f:
                    f.write(".so man3/%s.3\n" % over)
                written[m] = over
        del all_names

    if args.list:
        with open(args.list, "w", encoding="utf-8") as f:
            for nm in sorted(written):
                f.write(nm + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
