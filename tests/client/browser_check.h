// Renders a qsearch report in headless Chromium (Debian's `chromium`, installed by
// deploy/install-deps.sh) and reads back what the browser laid out: every bit-width bar
// with its rendered size and fill, every curve, and any external resource the page pulls
// in. A copy of the page gets a small inline script that measures the elements after
// layout and writes the figures into a <pre>; `--dump-dom` prints the document after
// scripts ran. A screenshot of the page as shipped goes to `work_dir/report.png`.
#ifndef QSEARCH_TESTS_CLIENT_BROWSER_CHECK_H_
#define QSEARCH_TESTS_CLIENT_BROWSER_CHECK_H_

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace qsearch::testing {

struct RenderedBar {
  std::string part;    // "weight" or "activation"
  std::string layer;
  std::string scheme;  // "float" for layers kept in float
  double bits = 0;
  std::string fill;    // computed style, e.g. "rgb(225, 87, 89)"
  double width = 0, height = 0;
};

struct RenderedCurve {
  std::string phase;
  int points = 0;
  double width = 0;
};

struct RenderedReport {
  std::vector<RenderedBar> bars;
  std::vector<RenderedCurve> curves;
  int external_resources = -1;  // img, link, script[src], iframe, object, embed
  std::string title;
  std::string screenshot;       // PNG path
  std::int64_t screenshot_width = 0, screenshot_height = 0;
};

inline std::string PercentDecode(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

constexpr char kMeasureScript[] = R"(<script>
(function () {
  var out = [], enc = encodeURIComponent;
  document.querySelectorAll('rect.bar').forEach(function (r) {
    var b = r.getBoundingClientRect();
    out.push(['bar', r.classList.contains('weight') ? 'weight' : 'activation', enc(r.dataset.layer), r.dataset.bits,
              enc(r.dataset.scheme), enc(getComputedStyle(r).fill), b.width.toFixed(2), b.height.toFixed(2)].join('\t'));
  });
  document.querySelectorAll('polyline.curve').forEach(function (c) {
    out.push(['curve', c.dataset.phase, c.points.numberOfItems, c.getBoundingClientRect().width.toFixed(2)].join('\t'));
  });
  out.push(['external', document.querySelectorAll('img,link,script[src],iframe,object,embed').length].join('\t'));
  out.push(['title', enc(document.title)].join('\t'));
  var pre = document.createElement('pre');
  pre.id = 'qsearch-check';
  pre.textContent = out.join('\n');
  document.body.appendChild(pre);
})();
</script>
)";

inline std::int64_t BigEndian32(const std::string& s, std::size_t at) {
  std::int64_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

inline absl::StatusOr<RenderedReport> RenderInChromium(const std::string& report_path, const std::string& work_dir) {
  namespace fs = std::filesystem;
  std::ifstream in(report_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", report_path));
  std::stringstream buf;
  buf << in.rdbuf();
  std::string html = buf.str();
  const std::size_t end = html.rfind("</body>");
  if (end == std::string::npos) return absl::InvalidArgumentError("the report has no </body>");
  html.insert(end, kMeasureScript);
  fs::create_directories(work_dir);
  const std::string checked = (fs::path(work_dir) / "checked.html").string();
  std::ofstream(checked, std::ios::binary) << html;

  // --no-sandbox: tests may run as root (CI containers), where Chromium's sandbox refuses
  // to start; the pages are our own files. A fresh profile keeps runs independent.
  const std::string common = absl::StrCat("timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars ",
                                          "--user-data-dir='", work_dir, "/profile' ");
  const std::string dom = (fs::path(work_dir) / "dom.html").string();
  const std::string log = (fs::path(work_dir) / "chromium.log").string();
  if (std::system(absl::StrCat(common, "--dump-dom 'file://", fs::absolute(checked).string(), "' > '", dom, "' 2> '", log, "'")
                      .c_str()) != 0) {
    return absl::InternalError(absl::StrCat("chromium --dump-dom failed; see ", log));
  }
  RenderedReport r;
  r.screenshot = (fs::path(work_dir) / "report.png").string();
  fs::remove(r.screenshot);
  if (std::system(absl::StrCat(common, "--window-size=1200,2400 --screenshot='", r.screenshot, "' 'file://",
                               fs::absolute(report_path).string(), "' >> '", log, "' 2>&1")
                      .c_str()) != 0) {
    return absl::InternalError(absl::StrCat("chromium --screenshot failed; see ", log));
  }
  std::ifstream png(r.screenshot, std::ios::binary);
  std::string header(24, '\0');
  if (!png.read(header.data(), 24) || header.compare(1, 3, "PNG") != 0) {
    return absl::InternalError(absl::StrCat("no PNG screenshot at ", r.screenshot));
  }
  r.screenshot_width = BigEndian32(header, 16);
  r.screenshot_height = BigEndian32(header, 20);

  std::ifstream dom_in(dom);
  std::stringstream dom_buf;
  dom_buf << dom_in.rdbuf();
  const std::string text = dom_buf.str();
  const std::size_t open = text.find("<pre id=\"qsearch-check\">");
  const std::size_t close = text.find("</pre>", open);
  if (open == std::string::npos || close == std::string::npos) {
    return absl::InternalError(absl::StrCat("the measuring script left no output in ", dom));
  }
  const std::string body = text.substr(open + 24, close - open - 24);
  for (absl::string_view line : absl::StrSplit(body, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, '\t');
    if (f[0] == "bar" && f.size() == 8) {
      r.bars.push_back({f[1], PercentDecode(f[2]), PercentDecode(f[4]), std::stod(f[3]), PercentDecode(f[5]),
                        std::stod(f[6]), std::stod(f[7])});
    } else if (f[0] == "curve" && f.size() == 4) {
      r.curves.push_back({f[1], std::stoi(f[2]), std::stod(f[3])});
    } else if (f[0] == "external" && f.size() == 2) {
      r.external_resources = std::stoi(f[1]);
    } else if (f[0] == "title" && f.size() == 2) {
      r.title = PercentDecode(f[1]);
    }
  }
  return r;
}

}  // namespace qsearch::testing

#endif  // QSEARCH_TESTS_CLIENT_BROWSER_CHECK_H_
