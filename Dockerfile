# toprouter-proxy: a small, non-root image for running the proxy as a sidecar or a gateway.
#
#   docker build -t toprouter-proxy .
#   docker run --rm -p 8787:8787 \
#     -e TOPROUTER_API_KEY \
#     -e TOPROUTER_PROXY_CONFIG=/config/config.yaml \
#     -v "$PWD/config.example.yaml:/config/config.yaml:ro" \
#     toprouter-proxy
#
# Configuration is mounted, never baked in: mount a YAML file (e.g. at /config/config.yaml) and point
# TOPROUTER_PROXY_CONFIG at it. Without one the built-in defaults apply. Secrets such as
# TOPROUTER_API_KEY come from the environment only; the config file must not hold them.
#
# test/dockerfile.test.ts parses this file and replays the runtime stage (its ENV, RUN, CMD and
# HEALTHCHECK) against `npm pack` output, so keep the runtime stage's RUN lines runnable with
# `sh -c` from the app directory.

ARG NODE_VERSION=24

# ---- build: install every dependency and compile TypeScript to dist/ ----
FROM node:${NODE_VERSION}-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig*.json ./
COPY src/ ./src/
RUN npm run build

# ---- runtime: production dependencies and the compiled output only ----
FROM node:${NODE_VERSION}-slim
# HOST=0.0.0.0 so the proxy is reachable from other containers; outside Docker it defaults to 127.0.0.1.
ENV NODE_ENV=production HOST=0.0.0.0 PORT=8787
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
# The official node images ship an unprivileged "node" user (uid 1000).
USER node
EXPOSE 8787
# Liveness via node itself: slim images have no curl or wget. /healthz never touches the upstream.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8787)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Exec form, and node directly rather than `npm start` or a shell: node is then PID 1 and receives
# SIGTERM/SIGINT itself, so it can drain in-flight requests and streams and exit 0. A shell form
# (`sh -c ...`) or npm in between would swallow or delay the signal, and `npm start` would also run
# the prestart build, which needs devDependencies that this image does not have.
CMD ["node", "dist/main.js"]
