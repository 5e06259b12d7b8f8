// The player page of a moment: the video starts at its second (the src's #t= fragment, and
// currentTime where a browser ignores it); a timeline mark or a moment's frame seeks there; a
// video the browser cannot play gives way to the frame and a note saying so. Without this
// script the marks and frames are links to each moment's own page.
(function () {
  "use strict";

  const page = document.getElementById("video-page");
  if (!page) return;
  const video = document.getElementById("video");
  const still = document.getElementById("still");
  const note = document.getElementById("unplayable");
  const now = document.getElementById("now");
  const heading = document.getElementById("moment");
  const playhead = document.getElementById("playhead");
  const start = Number(page.dataset.t) || 0;
  const duration = Number(page.dataset.duration) || 0;
  const SEEK_SLACK = 0.25;  // seconds: a start this close to the moment is left alone

  // "0:01:23", tenths where the time is not on a whole second (clipdex.video.format_time).
  function formatTime(seconds) {
    let whole = Math.floor(Math.max(0, seconds) + 1e-6);
    let tenths = Math.round((Math.max(0, seconds) - whole) * 10);
    if (tenths === 10) { whole += 1; tenths = 0; }
    const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
    const text = h + ":" + String(m).padStart(2, "0") + ":" + String(s).padStart(2, "0");
    return tenths ? text + "." + tenths : text;
  }

  function cannotPlay() {
    if (video) { video.pause(); video.hidden = true; }
    still.hidden = false;
    note.hidden = false;
    playhead.hidden = true;
    page.classList.add("unplayable");
  }

  function showTime(t) {
    now.textContent = formatTime(t);
    if (duration > 0) {
      playhead.hidden = false;
      playhead.style.left = Math.min(100, (100 * t) / duration) + "%";
    }
  }

  // The moment shown: marked on the timeline and among the frames, named in the heading and the
  // address (a reload or a bookmark opens the same moment).
  function choose(link) {
    document.querySelectorAll("#timeline .mark.current, #moments .card.current")
      .forEach((el) => el.classList.remove("current"));
    document.querySelectorAll('[data-id="' + link.dataset.id + '"]').forEach((el) => {
      if (el.closest("#timeline, #moments")) el.classList.add("current");
    });
    heading.textContent = page.dataset.name + " @ " + formatTime(Number(link.dataset.t));
    history.replaceState(null, "", link.href);
    const like = document.getElementById("more-like-this");
    if (like) {
      const url = new URL(like.href);
      url.searchParams.set("like", link.dataset.id);
      like.href = url.pathname + url.search;
    }
  }

  if (video) {
    const check = page.dataset.check;
    if ((check && !video.canPlayType(check)) || video.error) cannotPlay();
    video.addEventListener("error", cannotPlay);
    video.addEventListener("loadedmetadata", () => {
      if (Math.abs(video.currentTime - start) > SEEK_SLACK) video.currentTime = start;
    });
    video.addEventListener("timeupdate", () => showTime(video.currentTime));
    showTime(start);
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest("#timeline .mark, #moments .card");
    if (!link || !video || video.hidden) return;  // not playing here: the link opens that moment's page
    event.preventDefault();
    video.currentTime = Number(link.dataset.t);
    showTime(video.currentTime);
    choose(link);
  });
})();
