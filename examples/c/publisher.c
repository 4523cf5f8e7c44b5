/* A camera for streamfuse in C: libzmq + msgpack-c, nothing from streamfuse.
 *
 *   cc -O2 -o publisher publisher.c -lzmq -lmsgpackc
 *   ./publisher tcp://127.0.0.1:5555 video/front [COUNT] [SECRET_CERT]
 *
 * Binds ENDPOINT and publishes COUNT (default: for ever) raw 64x48 bgr8 frames at 30 fps on
 * TOPIC, as [topic, header, pixels], the header a MessagePack map with the fields of
 * docs/protocol.md ("Feeding the daemon from your own process"). With SECRET_CERT (a key
 * pair written by `streamfuse keys generate`, the format of pyzmq's zmq.auth) the socket is
 * a CURVE server: only a subscriber that knows its public key can connect. Point the daemon
 * at it:  streamfuse run --camera-endpoint tcp://127.0.0.1:5555
 * Written from docs/protocol.md alone.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

enum { W = 64, H = 48 };

static uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void put_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* `secret-key = "..."` from a zmq.auth certificate file into out (41 bytes). */
static int read_secret(const char *path, char *out) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, "secret-key = \"");
        if (p && strlen(p + 14) >= 40) {
            memcpy(out, p + 14, 40);
            out[40] = '\0';
            found = 0;
        }
    }
    fclose(f);
    return found;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s ENDPOINT TOPIC [COUNT] [SECRET_CERT]\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1], *topic = argv[2];
    long count = argc > 3 ? atol(argv[3]) : -1;
    const char *stream = strchr(topic, '/') ? strchr(topic, '/') + 1 : topic;
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_PUB);
    if (argc > 4) {
        char secret[41];
        int one = 1;
        if (read_secret(argv[4], secret) != 0) {
            fprintf(stderr, "cannot read a secret key from %s\n", argv[4]);
            return 2;
        }
        zmq_setsockopt(pub, ZMQ_CURVE_SERVER, &one, sizeof one);
        zmq_setsockopt(pub, ZMQ_CURVE_SECRETKEY, secret, 40);
    }
    if (zmq_bind(pub, endpoint) != 0) {
        fprintf(stderr, "cannot bind %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 2;
    }
    static uint8_t pixels[W * H * 3];
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    struct timespec period = {0, 1000000000 / 30};
    for (uint64_t seq = 0; count < 0 || (long)seq < count; seq++) {
        for (int i = 0; i < W * H * 3; i++) pixels[i] = (uint8_t)(i + seq);
        msgpack_sbuffer_clear(&buf);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 10);
        put_str(&pk, "v"), msgpack_pack_uint8(&pk, 1);
        put_str(&pk, "kind"), put_str(&pk, "video");
        put_str(&pk, "stream"), put_str(&pk, stream);
        put_str(&pk, "seq"), msgpack_pack_uint64(&pk, seq);
        put_str(&pk, "t_capture"), msgpack_pack_uint64(&pk, now_ns(CLOCK_MONOTONIC));
        put_str(&pk, "t_wall"), msgpack_pack_uint64(&pk, now_ns(CLOCK_REALTIME));
        put_str(&pk, "width"), msgpack_pack_uint16(&pk, W);
        put_str(&pk, "height"), msgpack_pack_uint16(&pk, H);
        put_str(&pk, "pixel_format"), put_str(&pk, "bgr8");
        put_str(&pk, "encoding"), put_str(&pk, "raw");
        zmq_send(pub, topic, strlen(topic), ZMQ_SNDMORE);
        zmq_send(pub, buf.data, buf.size, ZMQ_SNDMORE);
        zmq_send(pub, pixels, sizeof pixels, 0);
        nanosleep(&period, NULL);
    }
    msgpack_sbuffer_destroy(&buf);
    zmq_close(pub);
    zmq_ctx_term(ctx);
    return 0;
}
