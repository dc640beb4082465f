"""The web app's built files (static/: index.html, app.js, app.css), produced
from clients/js by `npm run build` (scripts/setup/40-web.sh) and shipped as
package data; the gateway serves them at `/` (chatplane.gateway.webapp)."""
