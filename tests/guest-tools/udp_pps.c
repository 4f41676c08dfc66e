/*
 * Small-frame packets per second for `cargo xtask bench guest-net`, run inside a guest
 * (built with `gcc -static -O2`, packed into the guest initramfs as /bin/udp_pps).
 *
 *   udp_pps send IP PORT SECONDS BYTES   sends BYTES-byte UDP datagrams to IP:PORT as fast
 *                                        as the socket takes them for SECONDS; prints
 *                                        "udp_pps sent N packets in S s"
 *   udp_pps recv PORT SECONDS            counts datagrams on PORT from the first one for
 *                                        SECONDS (or until 3 s pass without one); prints
 *                                        "udp_pps received N packets in S s"
 *
 * An 18-byte payload makes a 60-byte frame (14 Ethernet + 20 IPv4 + 8 UDP + 18), the
 * smallest Ethernet frame without padding.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int send_mode(const char *ip, int port, double seconds, int bytes)
{
	char payload[1472];
	struct sockaddr_in to;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || bytes < 1 || bytes > (int)sizeof payload) {
		perror("udp_pps send");
		return 1;
	}
	memset(payload, 0x5a, sizeof payload);
	memset(&to, 0, sizeof to);
	to.sin_family = AF_INET;
	to.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, ip, &to.sin_addr) != 1) {
		fprintf(stderr, "udp_pps: bad address %s\n", ip);
		return 1;
	}
	unsigned long sent = 0, refused = 0;
	double start = now(), end = start + seconds, t = start;
	while (t < end) {
		for (int i = 0; i < 64; i++) {
			if (sendto(fd, payload, (size_t)bytes, 0, (struct sockaddr *)&to, sizeof to) ==
			    bytes)
				sent++;
			else
				refused++;
		}
		t = now();
	}
	printf("udp_pps sent %lu packets in %.3f s (%lu refused)\n", sent, t - start, refused);
	return 0;
}

static int recv_mode(int port, double seconds)
{
	char buf[2048];
	struct sockaddr_in at;
	struct timeval idle = {.tv_sec = 3, .tv_usec = 0};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	int size = 4 << 20;
	if (fd < 0) {
		perror("udp_pps recv");
		return 1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
	memset(&at, 0, sizeof at);
	at.sin_family = AF_INET;
	at.sin_port = htons((unsigned short)port);
	at.sin_addr.s_addr = htonl(INADDR_ANY);
	if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0) {
		perror("udp_pps bind");
		return 1;
	}
	/* The first datagram starts the clock; no timeout before it. */
	if (recv(fd, buf, sizeof buf, 0) < 0) {
		perror("udp_pps recv");
		return 1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
	unsigned long received = 1;
	double start = now(), last = start;
	while (last - start < seconds) {
		if (recv(fd, buf, sizeof buf, 0) < 0) {
			if (errno == EINTR)
				continue;
			break; /* idle: the sender is done */
		}
		received++;
		last = now();
	}
	printf("udp_pps received %lu packets in %.3f s\n", received, last - start);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 6 && strcmp(argv[1], "send") == 0)
		return send_mode(argv[2], atoi(argv[3]), atof(argv[4]), atoi(argv[5]));
	if (argc == 4 && strcmp(argv[1], "recv") == 0)
		return recv_mode(atoi(argv[2]), atof(argv[3]));
	fprintf(stderr, "usage: udp_pps send IP PORT SECONDS BYTES | recv PORT SECONDS\n");
	return 2;
}
