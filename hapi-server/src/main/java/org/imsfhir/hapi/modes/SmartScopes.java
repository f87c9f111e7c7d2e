package org.imsfhir.hapi.modes;

import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.Map;
import java.util.Set;

/**
 * The SMART system scopes of one access token, as interactions per resource type.
 *
 * <p>Terms: an <em>interaction letter</em> is one of {@code c r u d s} (create, read, update,
 * delete, search) as SMART v2 writes them ({@code system/Patient.cus}); SMART v1 scopes map
 * onto them ({@code .read} = r s, {@code .write} = c u d, {@code .*} = all). The type {@code *}
 * grants every resource type. Only {@code system/} scopes count (this server serves backend
 * clients only); granular v2 scopes with a query ({@code ?category=...}) grant nothing here,
 * because this server cannot narrow a request to them.
 */
public final class SmartScopes {

	private static final String ALL = "cruds";
	private final Map<String, Set<Character>> granted;

	private SmartScopes(Map<String, Set<Character>> granted) {
		this.granted = granted;
	}

	/** Reads a space-separated {@code scope} claim (null or blank: nothing granted). */
	public static SmartScopes parse(String scopeClaim) {
		Map<String, Set<Character>> granted = new HashMap<>();
		if (scopeClaim != null) {
			for (String scope : scopeClaim.trim().split("\\s+")) {
				if (!scope.startsWith("system/") || scope.contains("?")) {
					continue;
				}
				String body = scope.substring("system/".length());
				int dot = body.lastIndexOf('.');
				if (dot <= 0) {
					continue;
				}
				String type = body.substring(0, dot);
				String rights = body.substring(dot + 1);
				String letters = switch (rights) {
					case "read" -> "rs";
					case "write" -> "cud";
					case "*" -> ALL;
					default -> isV2(rights) ? rights : "";
				};
				Set<Character> set = granted.computeIfAbsent(type, k -> new LinkedHashSet<>());
				for (char c : letters.toCharArray()) {
					set.add(c);
				}
			}
		}
		return new SmartScopes(granted);
	}

	private static boolean isV2(String rights) {
		// v2 letters appear at most once each, in the order c r u d s.
		int last = -1;
		for (char c : rights.toCharArray()) {
			int at = ALL.indexOf(c);
			if (at <= last) {
				return false;
			}
			last = at;
		}
		return !rights.isEmpty();
	}

	/** True when {@code letter} is granted on {@code resourceType} (directly or through {@code *}). */
	public boolean allows(String resourceType, char letter) {
		return granted.getOrDefault(resourceType, Collections.emptySet()).contains(letter)
				|| granted.getOrDefault("*", Collections.emptySet()).contains(letter);
	}

	/** The scope that would allow {@code letter} on {@code resourceType}, for error messages. */
	public static String needed(String resourceType, char letter) {
		return "system/" + resourceType + "." + letter;
	}
}
