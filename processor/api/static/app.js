// The dashboard's only script: confirmations before actions, and live refresh.
"use strict";

// Every form with data-confirm asks first.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// A region with data-refresh is replaced by a fresh copy from that URL every data-refresh-ms.
// A copy without data-refresh (its instances have finished) stops the polling. A region the
// user is typing in is left alone.
function isBusy(region) {
  if (region.contains(document.activeElement) && document.activeElement !== document.body) {
    return true;
  }
  return [...region.querySelectorAll("textarea, input")].some(
    (field) => field.value !== field.defaultValue,
  );
}

async function refresh(region) {
  const url = region.dataset.refresh;
  if (!url || !region.isConnected) {
    return;
  }
  if (!isBusy(region)) {
    try {
      const response = await fetch(url, { headers: { Accept: "text/html" } });
      if (response.ok) {
        const holder = document.createElement("div");
        holder.innerHTML = await response.text();
        const fresh = holder.firstElementChild;
        region.replaceWith(fresh);
        schedule(fresh);
        return;
      }
    } catch (error) {
      console.warn("refresh failed, trying again", error);
    }
  }
  schedule(region);
}

function schedule(region) {
  if (region && region.dataset.refresh) {
    setTimeout(() => refresh(region), Number(region.dataset.refreshMs) || 2000);
  }
}

document.querySelectorAll("[data-refresh]").forEach(schedule);
