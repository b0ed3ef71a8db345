# shellcheck shell=bash
# The admin status page (src/admin/page.html) in headless Chromium. Sourced by run.sh, which
# defines ok NAME / ko NAME; defines status_page_check:
#
#   status_page_check ADMIN_URL TOKEN EXPECT_FILE EXPECT_USER SCREENSHOT_PATH
#
# Loads ADMIN_URL/#token=TOKEN (no fragment when TOKEN is empty), dumps the DOM once the page
# has rendered its first refresh, and checks that: the page loaded its data
# (<html data-loaded="true">, no error banner, no token form), some table cell's text contains
# EXPECT_FILE (a running upload's path or an outbox key), some cell's text is EXPECT_USER, and
# the console shows no Content-Security-Policy violation or uncaught script error. Then it
# saves a 1280x1000 screenshot to SCREENSHOT_PATH.
#
# Waiting: --dump-dom alone dumps before the page's fetch() calls have answered (tables empty).
# --virtual-time-budget=MS makes Chromium dump only after MS of virtual time, and virtual time
# does not advance while a network request is outstanding, so the API's answers are in even
# when it is slow (measured: a 1000 ms budget against an API that answers after 3 s still
# dumps the rendered data). The page sets data-loaded="true" on <html> after its first full
# refresh; that is what the check looks for.

status_page_install_chromium() {
  command -v chromium >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 ||
    (apt-get update -qq && apt-get install -y -qq chromium))
}

# status_page_chromium DIR ARGS...: headless Chromium with its home and profile in DIR (works
# as root); console messages go to stderr as INFO:CONSOLE lines.
status_page_chromium() {
  local dir=$1
  shift
  HOME="$dir" timeout 120 nice -n 10 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --user-data-dir="$dir/profile" --no-first-run --disable-extensions --hide-scrollbars \
    --enable-logging=stderr --v=0 "$@"
}

# status_page_log_tail LOG: Chromium's last lines, without its usual noise in a container.
status_page_log_tail() {
  grep -vE 'dbus|idle_linux|vaapi|sandbox_linux|unexpected operator' "$1" | tail -n 5 | sed 's/^/  chromium: /'
}

# status_page_inspect DOM_FILE FILE USER: prints what the dumped DOM shows, one "name value" a line.
status_page_inspect() {
  python3 - "$@" <<'EOF'
import sys
from html.parser import HTMLParser

dom, want_file, want_user = sys.argv[1], sys.argv[2], sys.argv[3]


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.loaded = False
        self.cells, self.cell = [], None
        self.banner, self.in_banner, self.banner_shown = "", False, False
        self.auth_shown = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.loaded = a.get("data-loaded") == "true"
        if tag == "td":
            self.cell = []
        if a.get("id") == "banner":
            self.in_banner, self.banner_shown = True, "hidden" not in a
        if a.get("id") == "auth":
            self.auth_shown = "hidden" not in a

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.cells.append("".join(self.cell).strip())
            self.cell = None
        if tag == "div" and self.in_banner:
            self.in_banner = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.in_banner:
            self.banner += data


p = Page()
with open(dom, encoding="utf-8", errors="replace") as f:
    p.feed(f.read())
print("loaded", "yes" if p.loaded else "no")
print("cells", len(p.cells))
print("file", "yes" if want_file and any(want_file in c for c in p.cells) else "no")
print("user", "yes" if want_user and any(c == want_user for c in p.cells) else "no")
print("auth", "shown" if p.auth_shown else "hidden")
print("banner", " ".join(p.banner.split()) if p.banner_shown else "")
EOF
}

status_page_check() {
  local url=${1%/} token=${2:-} file=${3:-} user=${4:-} shot=${5:-}
  local page="$url/" dir info banner errors
  [ -n "$token" ] && page="$url/#token=$token"
  if ! status_page_install_chromium || ! command -v chromium >/dev/null; then
    ko "status page: chromium could not be installed"
    return 1
  fi
  dir=$(mktemp -d)

  status_page_chromium "$dir" --virtual-time-budget=5000 --dump-dom "$page" >"$dir/dom.html" 2>"$dir/dom.log"
  info=$(status_page_inspect "$dir/dom.html" "$file" "$user")
  banner=$(sed -n 's/^banner //p' <<<"$info")
  if grep -qx "auth shown" <<<"$info"; then
    ko "status page: loads its data from the admin API (the API answered 401: the page asks for a token)"
  elif [ -n "$banner" ]; then
    ko "status page: loads its data from the admin API (the page shows: $banner)"
  elif ! grep -qx "loaded yes" <<<"$info"; then
    ko "status page: loads its data from the admin API (nothing rendered from $url/)"
    status_page_log_tail "$dir/dom.log"
  else
    ok "status page: loads its data from the admin API"
  fi
  if grep -qx "file yes" <<<"$info"; then ok "status page: shows the file $file"; else ko "status page: shows the file $file"; fi
  if grep -qx "user yes" <<<"$info"; then ok "status page: shows the user $user"; else ko "status page: shows the user $user"; fi
  errors=$(grep 'CONSOLE' "$dir/dom.log" | grep -E 'Content Security Policy|Uncaught')
  if [ -z "$errors" ]; then
    ok "status page: no CSP violation or script error"
  else
    ko "status page: no CSP violation or script error"
    head -n 5 <<<"$errors" | sed 's/^/  console: /'
  fi

  if [ -n "$shot" ]; then
    mkdir -p "$(dirname "$shot")"
    rm -f "$shot"
    status_page_chromium "$dir" --virtual-time-budget=5000 --window-size=1280,1000 --screenshot="$shot" "$page" \
      >"$dir/shot.log" 2>&1
    if [ -s "$shot" ] && [ "$(head -c 4 "$shot" | od -An -c | tr -d ' ')" = "211PNG" ]; then
      ok "status page: screenshot $shot"
    else
      ko "status page: screenshot $shot"
      status_page_log_tail "$dir/shot.log"
    fi
  fi
  rm -rf "$dir"
}
